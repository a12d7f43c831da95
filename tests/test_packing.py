"""Packed rows (``segment_ids``): each packed sequence gets what it gets alone in its own row.

The reference is the unpacked model (itself checked against Hugging Face in test_models.py):
the same sequences, one per padded row. Positions are checked against Hugging Face's
``create_position_ids_from_input_ids`` of each sequence alone. fp32 on CPU; splash in Pallas
interpret mode and through libtpu's deviceless TPU compile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hf_reference import padded_batch

from tests.conftest import require_libtpu
from xstilts import partitioning, trainer
from xstilts.models import heads
from xstilts.models.xlmr import XLMRConfig, XLMRModel, position_ids_from_segment_ids

TOL = 1e-5
CONFIG = XLMRConfig.tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# Row 0 packs three sequences, row 1 two, row 2 is one unpacked sequence, row 3 only padding.
ROWS = ((9, 5, 6), (11, 4), (7,), ())


def _sequences(lengths) -> list[np.ndarray]:
    ids, _ = padded_batch(lengths=lengths, max_len=max(lengths), seed=3)
    return [ids[i, :n] for i, n in enumerate(lengths)]


def _packed_and_alone(length: int, rows=ROWS):
    """(packed ids, mask, segment_ids), (alone ids, mask), and for every packed sequence its
    (row, start, end) in the packed batch; sequence j is row j of the unpacked batch."""
    seqs = _sequences(tuple(n for row in rows for n in row))
    pad = CONFIG.pad_token_id
    ids = np.full((len(rows), length), pad, np.int32)
    seg = np.zeros_like(ids)
    alone = np.full((len(seqs), length), pad, np.int32)
    where, j = [], 0
    for r, row in enumerate(rows):
        start = 0
        for s, n in enumerate(row, start=1):
            ids[r, start:start + n], seg[r, start:start + n] = seqs[j], s
            alone[j, :n] = seqs[j]
            where.append((r, start, start + n))
            start, j = start + n, j + 1
    return (ids, (seg > 0).astype(np.int32), seg), (alone, (alone != pad).astype(np.int32)), where


def test_positions_restart_per_segment_as_hugging_face_gives_each_sequence_alone():
    import torch
    from transformers.models.xlm_roberta.modeling_xlm_roberta import (
        create_position_ids_from_input_ids,
    )

    (ids, _, seg), _, where = _packed_and_alone(32)
    ours = np.asarray(position_ids_from_segment_ids(jnp.asarray(seg), CONFIG.pad_token_id))
    for r, start, end in where:
        alone = torch.tensor(ids[r:r + 1, start:end], dtype=torch.long)
        hf = create_position_ids_from_input_ids(alone, CONFIG.pad_token_id).numpy()[0]
        np.testing.assert_array_equal(ours[r, start:end], hf)
    np.testing.assert_array_equal(ours[seg == 0], CONFIG.pad_token_id)
    assert ours[0, 14] == CONFIG.pad_token_id + 1  # the third sequence of row 0 restarts


def _hidden(config, params, ids, mask, seg=None):
    fn = jax.jit(functools.partial(XLMRModel(config).apply, deterministic=True))
    return np.asarray(fn({"params": params}, ids, mask, segment_ids=seg))


@pytest.mark.parametrize(("impl", "length"), [("einsum", 32), ("xla", 32), ("splash", 128)])
def test_packed_rows_give_each_sequence_its_hidden_states_alone(impl, length):
    (ids, mask, seg), (alone, alone_mask), where = _packed_and_alone(length)
    config = CONFIG.replace(attention=impl)
    params = XLMRModel(CONFIG).init_params(jax.random.key(0))
    packed = _hidden(config, params, ids, mask, seg)
    ref = _hidden(CONFIG.replace(attention="einsum"), params, alone, alone_mask)
    worst = max(float(np.abs(packed[r, s:e] - ref[j, :e - s]).max())
                for j, (r, s, e) in enumerate(where))
    assert worst < TOL
    assert np.isfinite(packed).all()  # pad positions and the all-padding row included
    # Without segment_ids the packed sequences would see each other: the test can fail.
    mixed = _hidden(config, params, ids, mask)
    r, s, e = where[1]
    assert float(np.abs(mixed[r, s:e] - ref[1, :e - s]).max()) > 1e-2


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_unpacked_segment_ids_are_bit_identical_to_none(impl):
    """An unpacked row's segment_ids equal its attention mask: the same numbers, every
    position (pads and the all-padding row included)."""
    ids, mask = padded_batch(lengths=(11, 7, 3, 1), max_len=12)
    ids[3], mask[3] = CONFIG.pad_token_id, 0
    config = CONFIG.replace(attention=impl)
    params = XLMRModel(config).init_params(jax.random.key(0))
    np.testing.assert_array_equal(_hidden(config, params, ids, mask, mask),
                                  _hidden(config, params, ids, mask))


def _mlm_batches(length: int):
    """Packed and unpacked MLM batches of the same sequences, ~30% of real tokens masked."""
    (ids, mask, seg), (alone, alone_mask), where = _packed_and_alone(length)
    rng = np.random.default_rng(1)
    labels = np.full_like(alone, -1)
    label_mask = np.zeros_like(alone)
    inputs = alone.copy()
    for j, (_, s, e) in enumerate(where):
        picks = rng.choice(np.arange(1, e - s - 1), size=max(1, (e - s) // 3), replace=False)
        labels[j, picks], label_mask[j, picks] = alone[j, picks], 1
        inputs[j, picks] = CONFIG.mask_token_id
    packed = {"input_ids": ids.copy(), "attention_mask": mask, "segment_ids": seg,
              "labels": np.full_like(ids, -1), "label_mask": np.zeros_like(ids)}
    for j, (r, s, e) in enumerate(where):
        packed["input_ids"][r, s:e] = inputs[j, :e - s]
        packed["labels"][r, s:e] = labels[j, :e - s]
        packed["label_mask"][r, s:e] = label_mask[j, :e - s]
    unpacked = {"input_ids": inputs, "attention_mask": alone_mask, "labels": labels,
                "label_mask": label_mask}
    return packed, unpacked, where


def _token_xent(logits, labels) -> np.ndarray:
    return np.asarray(optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.clip(jnp.asarray(labels), 0, logits.shape[-1] - 1)))


@pytest.mark.parametrize(("impl", "length"), [("einsum", 32), ("splash", 128)])
def test_packed_mlm_gives_each_example_its_loss_alone(impl, length):
    packed, unpacked, where = _mlm_batches(length)
    config = CONFIG.replace(attention=impl)
    model = heads.XLMRForMaskedLM(config)
    params = model.init(jax.random.key(0), packed["input_ids"][:1],
                        packed["attention_mask"][:1])["params"]

    def logits(cfg, batch):
        extra = {"segment_ids": batch["segment_ids"]} if "segment_ids" in batch else {}
        return jax.jit(functools.partial(heads.XLMRForMaskedLM(cfg).apply, **extra))(
            {"params": params}, batch["input_ids"], batch["attention_mask"])

    xent_packed = _token_xent(logits(config, packed), packed["labels"]) * packed["label_mask"]
    xent_alone = _token_xent(logits(CONFIG.replace(attention="einsum"), unpacked),
                             unpacked["labels"]) * unpacked["label_mask"]
    per_example_packed = [xent_packed[r, s:e].sum() for r, s, e in where]
    np.testing.assert_allclose(per_example_packed, xent_alone.sum(1), rtol=TOL, atol=TOL)
    assert min(per_example_packed) > 1.0  # real losses (vocab 1002: ~ln 1002 at init)


def _trainer(model, kind: str) -> trainer.Trainer:
    tx, schedule = trainer.make_optimizer(learning_rate=1e-3, total_steps=10)
    part = partitioning.Partitioner(partitioning.create_mesh(devices=jax.devices()[:1]))
    return trainer.Trainer(model, trainer.task_loss(kind), tx, schedule, part)


def test_trainer_step_on_packed_mlm_rows_equals_the_unpacked_step():
    """The real train step (masked-position logits, AdamW): the same loss, token count and
    gradient norm from the packed batch as from the same examples one per row."""
    packed, unpacked, _ = _mlm_batches(32)
    tr = _trainer(heads.XLMRForMaskedLM(CONFIG.replace(attention="xla")), "mlm")
    results = []
    for batch in (packed, unpacked):
        state = tr.init_state(jax.random.key(0), batch["input_ids"].shape)
        evaluated = float(tr.eval_step(state.params, batch)["loss_sum"])
        _, metrics = tr.train_step(state, batch)  # donates state
        results.append({"eval_loss_sum": evaluated, **{k: float(v) for k, v in metrics.items()}})
    got, want = results
    assert got["weight"] == want["weight"] == unpacked["label_mask"].sum()
    assert got["tokens"] == want["tokens"]
    for key in ("loss", "grad_norm", "correct", "eval_loss_sum"):
        np.testing.assert_allclose(got[key], want[key], rtol=TOL)
    assert got["grad_norm"] > 0.1


def test_multiple_choice_passes_segment_ids_per_choice():
    ids, mask = padded_batch(lengths=(11, 7, 3, 9), max_len=12)
    ids, mask = ids.reshape(2, 2, 12), mask.reshape(2, 2, 12)
    model = heads.XLMRForMultipleChoice(CONFIG)
    params = model.init(jax.random.key(0), ids, mask)["params"]
    with_seg = model.apply({"params": params}, ids, mask, segment_ids=mask)
    np.testing.assert_array_equal(with_seg, model.apply({"params": params}, ids, mask))
    with pytest.raises(ValueError, match=r"segment_ids: expected the shape of input_ids"):
        XLMRModel(CONFIG).apply({"params": XLMRModel(CONFIG).init_params(jax.random.key(0))},
                                ids[0], mask[0], segment_ids=mask)


def test_packed_mlm_step_compiles_for_tpu_with_splash_segment_ids():
    """Deviceless libtpu compile (v5e:2x2, fsdp=4) of the packed MLM train step: splash's
    Pallas kernels take the segment ids on the TPU target."""
    require_libtpu("deviceless TPU compile")
    from xstilts import aot

    config = XLMRConfig.tiny(dtype="bfloat16", attention="splash",
                             attention_probs_dropout_prob=0.0)
    part = partitioning.Partitioner(partitioning.create_mesh(
        fsdp=4, devices=aot.topology_devices("v5e:2x2")))
    tr = _trainer(heads.XLMRForMaskedLM(config), "mlm")
    tr = trainer.Trainer(tr.model, tr.loss_fn, tr.optimizer, tr.schedule, part)
    shape = trainer.StepShape("mlm", 2, 8, 128, packed=True)
    batch = shape.batch(part)
    assert set(batch) >= {"segment_ids", "labels", "label_mask"}
    state = tr.abstract_state(shape.input_shape)
    lowered = tr.partitioned_train_step(state, batch).lower(state, batch)
    compiled = lowered.compile()
    assert "tpu_custom_call" in compiled.as_text()
    assert compiled.memory_analysis() is not None
