"""Orbax checkpointer: keep last N + best, restore on another mesh, encoder-only restore, errors.

(The kill -9 mid-write and exact-resume checks are in test_trainer.py, next to the reference
runs they compare against.)
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from xstilts import checkpoints, partitioning
from xstilts.models import heads
from xstilts.models.xlmr import XLMRConfig
from xstilts.trainer import TrainState


def _state(step: int, mesh, *, width: int = 8, seed: int = 0) -> TrainState:
    rng = np.random.default_rng(seed)
    kernel = jax.device_put(rng.normal(size=(width, 16)).astype(np.float32),
                            NamedSharding(mesh, P("fsdp", "tensor")))
    head = jnp.asarray(rng.normal(size=(3,)).astype(np.float32))
    params = {"roberta": {"dense": {"kernel": kernel}}, "classifier": {"bias": head}}
    opt_state = {"count": jnp.int32(step), "mu": jax.tree.map(jnp.zeros_like, params)}
    return TrainState(step=jnp.int32(step), params=params, opt_state=opt_state,
                      rng=jax.random.PRNGKey(seed))


def _abstract(state: TrainState, sharding_fn) -> TrainState:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=sharding_fn(x)), state)


@pytest.fixture(scope="module")
def mesh_222():
    return partitioning.create_mesh(data=2, fsdp=2, tensor=2)


def test_keeps_last_n_plus_best(tmp_path, mesh_222):
    ckpt = checkpoints.Checkpointer(tmp_path, checkpoints.CheckpointConfig(
        keep=2, best_metric="eval/accuracy", best_mode="max"))
    accuracies = {1: 0.5, 2: 0.9, 3: 0.1, 4: None, 5: 0.3, 6: 0.2}
    for step, acc in accuracies.items():
        ckpt.save(_state(step, mesh_222), data_position={"batches_consumed": step},
                  metrics=None if acc is None else {"eval/accuracy": acc})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 5, 6]  # best (0.9 at step 2) + the last two
    assert ckpt.best_step() == 2
    assert ckpt.latest_step() == 6
    assert ckpt.metadata(5)["data_position"] == {"batches_consumed": 5}
    ckpt.close()
    assert sorted(os.listdir(tmp_path)) == ["2", "5", "6"]


def test_min_mode_keeps_the_lowest(tmp_path, mesh_222):
    ckpt = checkpoints.Checkpointer(tmp_path, checkpoints.CheckpointConfig(
        keep=1, best_metric="eval/loss", best_mode="min", async_save=False))
    for step, loss in ((1, 2.0), (2, 0.5), (3, 1.0)):
        ckpt.save(_state(step, mesh_222), metrics={"eval/loss": loss})
    assert ckpt.all_steps() == [2, 3] and ckpt.best_step() == 2
    ckpt.close()


@pytest.mark.parametrize("mode,values", [("max", (0.5, 0.9, 0.9, 0.9)),
                                         ("min", (2.0, 0.5, 0.5, 0.5))])
def test_ties_keep_the_earlier_step(tmp_path, mesh_222, mode, values):
    """jiant keeps the first best: a later equal value neither replaces it nor evicts it."""
    ckpt = checkpoints.Checkpointer(tmp_path, checkpoints.CheckpointConfig(
        keep=1, best_metric="eval/m", best_mode=mode, async_save=False))
    for step, value in enumerate(values, 1):
        ckpt.save(_state(step, mesh_222), metrics={"eval/m": value})
    assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2
    assert ckpt.metrics(2) == {"eval/m": values[1]}  # without the tie-break step key
    ckpt.close()


def test_restore_onto_a_different_mesh_is_exact(tmp_path, mesh_222):
    saved = _state(7, mesh_222, seed=3)
    ckpt = checkpoints.Checkpointer(tmp_path)
    ckpt.save(saved, data_position={"batches_consumed": 7})
    ckpt.close()
    other = partitioning.create_mesh(fsdp=8, data=1, tensor=1)
    target = NamedSharding(other, P(None, "fsdp"))
    abstract = _abstract(saved, lambda x: target if x.ndim == 2 else NamedSharding(other, P()))
    restored, meta = checkpoints.Checkpointer(tmp_path).restore(abstract)
    assert meta["step"] == 7 and meta["data_position"] == {"batches_consumed": 7}
    kernel = restored.params["roberta"]["dense"]["kernel"]
    assert kernel.sharding == target
    assert {s.data.shape for s in kernel.addressable_shards} == {(8, 2)}
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, mesh_222):
    ckpt = checkpoints.Checkpointer(tmp_path)
    ckpt.save(_state(1, mesh_222, width=8))
    ckpt.close()
    wider = _state(1, mesh_222, width=16)
    abstract = _abstract(wider, lambda x: x.sharding)
    with pytest.raises(ValueError, match=r"another model's parameters:\n  roberta/dense/kernel: "
                       r"checkpoint shape \[8, 16\] but the model expects \[16, 16\]"):
        checkpoints.Checkpointer(tmp_path).restore(abstract)
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        checkpoints.Checkpointer(tmp_path / "empty").restore(abstract)


def _random_params(model, mesh, seed: int, input_shape=(1, 8)):
    """Parameters of ``model`` drawn with numpy (no compile), placed by the default rules."""
    part = partitioning.Partitioner(mesh)
    ids = jnp.zeros(input_shape, jnp.int32)
    with part.context():
        boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids)["params"])
    shardings = part.boxed_shardings(boxed)
    rng = np.random.default_rng(seed)
    import flax.linen as nn

    return jax.tree.map(
        lambda x, sh: jax.device_put(rng.normal(size=x.shape).astype(x.dtype), sh),
        nn.unbox(boxed), shardings)


def test_encoder_only_restore_keeps_the_fresh_head(tmp_path, mesh_222):
    config = XLMRConfig.tiny()
    source = _random_params(heads.XLMRForSequenceClassification(config, 3), mesh_222, seed=1)
    ckpt = checkpoints.Checkpointer(tmp_path / "intermediate")
    ckpt.save(TrainState(step=jnp.int32(100), params=source,
                         opt_state={"count": jnp.int32(100)}, rng=jax.random.PRNGKey(0)))
    ckpt.close()
    # Target task: tagging with 7 labels, on another mesh.
    other = partitioning.create_mesh(data=1, fsdp=4, tensor=2)
    fresh = _random_params(heads.XLMRForTokenClassification(config, 7), other, seed=2)
    restored = checkpoints.restore_encoder_into(fresh, str(tmp_path / "intermediate"))
    assert set(restored) == {"roberta", "classifier"}
    src_enc = jax.tree_util.tree_flatten_with_path(source["roberta"])[0]
    new_enc = jax.tree.leaves(restored["roberta"])
    fresh_enc = jax.tree.leaves(fresh["roberta"])
    for (path, want), got, old in zip(src_enc, new_enc, fresh_enc, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(path))
        assert got.sharding == old.sharding  # laid out for the target mesh
    np.testing.assert_array_equal(np.asarray(restored["classifier"]["kernel"]),
                                  np.asarray(fresh["classifier"]["kernel"]))
    assert restored["classifier"]["kernel"].shape == (64, 7)
    # An encoder of another size is refused with the offending key.
    bigger = _random_params(heads.XLMRForTokenClassification(
        XLMRConfig.tiny(hidden_size=32, intermediate_size=64), 7), other, seed=3)
    with pytest.raises(ValueError, match=r"encoder 'roberta' of checkpoint .* another model"):
        checkpoints.restore_encoder_into(bigger, str(tmp_path / "intermediate"))
    with pytest.raises(ValueError, match=r"no 'roberta' subtree"):
        checkpoints.restore_encoder_into({"encoder": {}}, str(tmp_path / "intermediate"))


def test_pretrained_hugging_face_encoder_goes_into_a_fresh_task_model(tmp_path, mesh_222):
    """``train(init_pretrained_from=...)``'s loader: HF files -> the ``roberta`` subtree."""
    from xstilts.models import convert
    from xstilts.train import load_pretrained_encoder

    config = XLMRConfig.tiny()
    pretrained = _random_params(heads.XLMRForMaskedLM(config), mesh_222, seed=4)
    convert.save_hf_checkpoint(config, pretrained, tmp_path / "hf")
    fresh = _random_params(heads.XLMRForQuestionAnswering(config), mesh_222, seed=5)
    loaded = load_pretrained_encoder(fresh, str(tmp_path / "hf"))
    for (path, want), got, old in zip(jax.tree_util.tree_flatten_with_path(
            pretrained["roberta"])[0], jax.tree.leaves(loaded["roberta"]),
            jax.tree.leaves(fresh["roberta"]), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-7,
                                   err_msg=str(path))
        assert got.sharding == old.sharding
    np.testing.assert_array_equal(np.asarray(loaded["qa_outputs"]["kernel"]),
                                  np.asarray(fresh["qa_outputs"]["kernel"]))
    other = _random_params(heads.XLMRForQuestionAnswering(XLMRConfig.tiny(hidden_size=32,
                                                                          intermediate_size=64)),
                           mesh_222, seed=6)
    with pytest.raises(ValueError, match=r"Hugging Face checkpoint .* another model"):
        load_pretrained_encoder(other, str(tmp_path / "hf"))
