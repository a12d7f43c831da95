"""Mesh construction, logical axis rules and batch layout on 8 fake CPU devices."""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from tests.conftest import require_libtpu
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


# Device order, multi-slice (DCN) meshes --------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StubDevice:
    """A device as mesh_utils sees it (CPU devices have no ``slice_index``: stubs stand in)."""

    id: int
    process_index: int
    slice_index: int
    platform: str = "cpu"
    device_kind: str = "stub"


class NoSliceDevice(StubDevice):
    def __getattribute__(self, name):
        if name == "slice_index":
            raise AttributeError(name)
        return super().__getattribute__(name)


def _stubs(n: int, per_slice: int, per_process: int, cls=StubDevice) -> list:
    # Listed slice-interleaved, as a device list may come: the grid must not depend on it.
    devices = [cls(i, i // per_process, i // per_slice) for i in range(n)]
    return devices[::2] + devices[1::2]


def _attr(grid, name: str) -> list:
    return np.vectorize(lambda d: getattr(d, name))(grid).tolist()


def test_dcn_data_puts_each_slice_on_its_own_block_of_the_data_axis():
    grid = partitioning.device_grid((4, 2, 1), _stubs(8, 4, 2), dcn_data=2)
    assert grid.shape == (4, 2, 1)
    assert [row[0][0] for row in _attr(grid, "slice_index")] == [0, 0, 1, 1]
    # Each slice's own sub-grid is (2, 2, 1) and each process holds one contiguous block.
    assert partitioning.host_row_blocks(grid) == {0: (0, 2), 1: (2, 4), 2: (4, 6), 3: (6, 8)}
    # Devices without slice_index (GPU hosts): processes are the DCN granules (t5x's GPU mesh).
    grid = partitioning.device_grid((2, 4, 1), _stubs(8, 4, 4, NoSliceDevice), dcn_data=2)
    assert _attr(grid, "process_index") == [[[0]] * 4, [[1]] * 4]
    assert partitioning.num_slices(_stubs(8, 4, 2)) == 2
    assert partitioning.num_slices(jax.devices()) == 1  # CPU: no slice_index


@pytest.mark.parametrize(("sizes", "dcn", "per_slice", "message"), [
    ((4, 2, 1), 3, 4, r"dcn_data=3 does not divide the 2 slices"),
    ((4, 2, 1), 2, 2, r"dcn_data=2: the devices span 4 slices; .* must equal that number"),
    ((4, 2, 1), 1, 4, r"dcn_data=1: the devices span 2 slices; .* must equal that number"),
    ((1, 8, 1), 2, 4, r"data=1 is not divisible by dcn_data=2"),
    ((2, 2, 1), 2, 4, r"needs 4 devices but 8 were given"),
    ((4, 2, 1), 0, 4, r"dcn_data=0: must be >= 1"),
])
def test_bad_dcn_meshes_are_clear_errors(sizes, dcn, per_slice, message):
    with pytest.raises(ValueError, match=message):
        partitioning.device_grid(sizes, _stubs(8, per_slice, 2), dcn_data=dcn)


def test_hosts_that_interleave_on_the_batch_axes_are_refused():
    interleaved = np.array(_stubs(8, 8, 4)[:8], dtype=object).reshape(8, 1, 1)  # 0,0,1,1,0,0,1,1
    with pytest.raises(ValueError, match=r"process 0 holds batch positions \[0, 1, 4, 5\]"):
        partitioning.host_row_blocks(interleaved)
    with pytest.raises(ValueError, match=r"needs 4 devices but 8 are available"):
        partitioning.create_mesh(data=2, fsdp=2)
    # One process with fake CPU devices: dcn_data=-1 is its one granule, a plain mesh.
    assert dict(partitioning.create_mesh(dcn_data=-1).shape) == {"data": 8, "fsdp": 1,
                                                                 "tensor": 1}


def _tpu_devices(topology: str, **kwargs) -> list:
    require_libtpu("TPU topology devices")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                             **kwargs).devices)


def test_tpu_pod_meshes_keep_each_host_on_consecutive_batch_rows():
    """libtpu's description of a v5e 4x4 slice (4 hosts of 2x2 chips), without a TPU."""
    from jax.experimental import mesh_utils

    devices = _tpu_devices("v5e:4x4")
    assert len(devices) == 16 and len({d.process_index for d in devices}) == 4
    # mesh_utils' torus ring interleaves the hosts along fsdp=16 (what the old docstring denied):
    ring = mesh_utils.create_device_mesh((1, 16, 1), devices=devices)
    with pytest.raises(ValueError, match="not one contiguous block"):
        partitioning.host_row_blocks(ring)
    blocks = {p: (4 * p, 4 * p + 4) for p in range(4)}
    for sizes in ({"fsdp": 16}, {"data": 2, "fsdp": 8}, {"data": 4, "fsdp": 2, "tensor": 2}):
        mesh = partitioning.create_mesh(**sizes, devices=devices)
        positions = mesh.devices.shape[0] * mesh.devices.shape[1]
        per_host = positions // 4
        assert partitioning.host_row_blocks(mesh.devices) == {
            p: (per_host * p, per_host * (p + 1)) for p in range(4)}, sizes
    assert partitioning.host_row_blocks(
        partitioning.create_mesh(fsdp=16, devices=devices).devices) == blocks
    # Where the torus order already keeps hosts contiguous it is kept (v5p 2x2x4, tensor=2).
    devices = _tpu_devices("v5p:2x2x4")
    mesh = partitioning.create_mesh(data=4, fsdp=2, tensor=2, devices=devices)
    expected = mesh_utils.create_device_mesh((4, 2, 2), devices=devices)
    assert _attr(mesh.devices, "id") == _attr(expected, "id")


def test_multi_slice_tpu_mesh_spans_the_slices_on_the_data_axis():
    """Two v5e 2x2 slices (libtpu sets ``slice_index``): DCN carries only data parallelism."""
    devices = _tpu_devices("v5e:2x2", num_slices=2)
    assert sorted({d.slice_index for d in devices}) == [0, 1]
    mesh = partitioning.create_mesh(devices=devices)  # TPU default: fsdp within each slice
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert _attr(mesh.devices[:, :, 0], "slice_index") == [[0] * 4, [1] * 4]
    mesh = partitioning.create_mesh(data=4, fsdp=-1, dcn_data=2, devices=devices)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert [row[0] for row in _attr(mesh.devices[:, :, 0], "slice_index")] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"dcn_data=3 does not divide the 2 slices"):
        partitioning.create_mesh(dcn_data=3, devices=devices)
