"""Mesh construction, logical axis rules and batch layout on 8 fake CPU devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from xstilts import partitioning
from xstilts.models import heads
from xstilts.models.xlmr import XLMRConfig


def test_minus_one_fills_the_rest():
    assert partitioning.resolve_mesh_shape({"data": -1, "tensor": 2}, 8) == (4, 1, 2)
    assert partitioning.resolve_mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    assert partitioning.resolve_mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


@pytest.mark.parametrize(("shape", "message"), [
    ({"data": 3, "fsdp": -1}, r"fixed axes \(3 devices\) do not divide the 8"),
    ({"data": 2, "fsdp": 2}, r"needs 4 devices but 8 are available"),
    ({"data": -1, "fsdp": -1}, r"at most one axis may be -1"),
    ({"model": 2}, r"mesh axes \['model'\] are unknown"),
    ({"data": 0}, r"sizes must be >= 1 or -1"),
])
def test_bad_mesh_shapes_are_clear_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        partitioning.resolve_mesh_shape(shape, 8)


def test_create_mesh_uses_all_devices_with_auto_axes():
    mesh = partitioning.create_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    # CPU default: plain data parallelism over every device; accelerators default to FSDP.
    assert dict(partitioning.create_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert partitioning.default_mesh_shape("tpu") == {"data": 1, "fsdp": -1, "tensor": 1}
    assert partitioning.default_mesh_shape("some_future_chip")["data"] == -1


def test_parse_mesh_flag():
    assert partitioning.parse_mesh_flag("fsdp=8") == {"fsdp": 8}
    assert partitioning.parse_mesh_flag("data=2, tensor=-1") == {"data": 2, "tensor": -1}
    with pytest.raises(ValueError, match="expected comma-separated AXIS=SIZE"):
        partitioning.parse_mesh_flag("model=8")
    with pytest.raises(ValueError, match="not an integer"):
        partitioning.parse_mesh_flag("data=two")


def test_rules_shard_xlmr_parameters_as_designed():
    part = partitioning.Partitioner(partitioning.create_mesh(data=2, fsdp=2, tensor=2))
    model = heads.XLMRForSequenceClassification(XLMRConfig.tiny(), 3)
    ids = jnp.zeros((1, 8), jnp.int32)
    with part.context():
        boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids)["params"])
    shardings = part.boxed_shardings(boxed)
    enc = shardings["roberta"]
    assert enc["embeddings"]["word_embeddings"]["embedding"].spec == P("tensor", "fsdp")
    layer = enc["encoder"]["layer_0"]
    assert layer["attention"]["self"]["query"]["kernel"].spec == P("fsdp", "tensor", None)
    assert layer["attention"]["output"]["dense"]["kernel"].spec == P("tensor", None, "fsdp")
    assert layer["intermediate"]["dense"]["kernel"].spec == P("fsdp", "tensor")
    assert layer["output"]["dense"]["kernel"].spec == P("tensor", "fsdp")
    assert layer["output"]["LayerNorm"]["scale"].spec == P("fsdp")
    # Shard shapes of a real placement: 64 x 128 over fsdp=2 x tensor=2.
    kernel = jax.device_put(np.zeros((64, 128), np.float32),
                            layer["intermediate"]["dense"]["kernel"])
    assert {s.data.shape for s in kernel.addressable_shards} == {(32, 64)}


def test_custom_rules_and_bad_rules():
    mesh = partitioning.create_mesh(data=-1, fsdp=1, tensor=1)
    part = partitioning.Partitioner(mesh, logical_axis_rules=[("batch", "data"),
                                                              ("embed", None)])
    assert part.batch_spec(2) == P("data", None)
    assert part.num_batch_shards == 8
    with pytest.raises(ValueError, match=r"mesh axis 'model' is not one of"):
        partitioning.Partitioner(mesh, logical_axis_rules=[("mlp", "model")])


def test_batch_layout_and_global_arrays():
    part = partitioning.Partitioner(partitioning.create_mesh(data=2, fsdp=2, tensor=2))
    assert part.batch_spec(2) == P(("data", "fsdp"), None)
    layout = part.data_layout(8)
    assert (layout.shard_index, layout.num_shards, layout.per_host_batch_size) == (0, 1, 8)
    batch = {"input_ids": np.arange(32, dtype=np.int32).reshape(8, 4),
             "labels": np.arange(8, dtype=np.int32)}
    arrays = part.host_local_to_global(batch, 8)
    ids = arrays["input_ids"]
    assert ids.shape == (8, 4)
    # rows split over data x fsdp = 4 shards (2 rows each), replicated over tensor
    assert {s.data.shape for s in ids.addressable_shards} == {(2, 4)}
    np.testing.assert_array_equal(np.asarray(ids), batch["input_ids"])
    with pytest.raises(ValueError, match=r"global batch size 6 is not divisible by the 4"):
        part.data_layout(6)
