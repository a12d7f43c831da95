"""Packed classification rows (issue 16 item 3): whole XNLI pairs packed first-fit into rows,
each example read from its own ``<s>``; the logits, per-example losses, loss sums and
gradients equal those of the same examples one per row (the unpacked model is itself checked
against Hugging Face in test_models.py). Real XNLI dev pairs from ``../shared/data``, the tiny
model in fp32 with dropout off."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import require_sample, shared_data_dir
from xstilts import partitioning, trainer
from xstilts.data import pipeline as PL
from xstilts.data import preprocessors as P
from xstilts.data.feature_converters import FeatureBatcher, ShardInfo, pack_batch
from xstilts.models import heads
from xstilts.models.xlmr import XLMRConfig
from xstilts.tokenization import XLMRTokenizer

TOL = 1e-5
LENGTH = 128
CONFIG = XLMRConfig.tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def features() -> list[dict]:
    tok = XLMRTokenizer(require_sample("spm/test_model.model"))
    return PL.task_features("xnli.en", "dev", tok, data_dir=shared_data_dir(),
                            max_length=LENGTH, allow_samples=True)


def _first_fit_by_hand(lengths, capacity: int, max_segments: int) -> list[list[int]]:
    """First-fit decreasing, scanning every open row (the O(n * rows) definition)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for r in range(len(rows)):
            if room[r] >= lengths[i] and len(rows[r]) < max_segments:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def test_pack_first_fit_is_first_fit_decreasing_and_keeps_every_example_whole():
    rng = np.random.default_rng(0)
    for _ in range(100):
        lengths = rng.integers(1, 65, int(rng.integers(1, 60))).tolist()
        segments = int(rng.integers(1, 6))
        rows = P.pack_first_fit(lengths, 64, segments)
        assert rows == _first_fit_by_hand(lengths, 64, segments)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 64 and len(row) <= segments for row in rows)
    with pytest.raises(ValueError, match=r"sequence 1 has 65 tokens; expected 1..64"):
        P.pack_first_fit([3, 65], 64, 4)


def _batches(features, count: int, segments: int = 8):
    """One packed batch holding ``features[:count]`` and the unpacked batch of the same."""
    chosen = features[:count]
    packed = FeatureBatcher(chosen, "classification", batch_size=1, length=LENGTH,
                            shuffle=False, classification_packing=True, max_segments=segments)
    packed = FeatureBatcher(chosen, "classification", batch_size=packed.num_rows,
                            length=LENGTH, shuffle=False, classification_packing=True,
                            max_segments=segments).batch(0)
    unpacked = FeatureBatcher(chosen, "classification", batch_size=count, length=LENGTH,
                              shuffle=False).batch(0)
    return dict(packed), dict(unpacked)


def _device(batch):
    return {k: jnp.asarray(v) for k, v in batch.items() if k != "feature_index"}


def test_packed_batch_layout(features):
    packed, unpacked = _batches(features, 24)
    rows, slots = packed["labels"].shape
    assert rows <= 24 / 2 and slots == 8  # real pairs (median ~60 tokens): >= 2 per row
    real = packed["example_mask"] == 1
    assert sorted(packed["feature_index"][real].tolist()) == list(range(24))
    assert (packed["feature_index"][~real] == -1).all() and (packed["labels"][~real] == -1).all()
    for r, s in zip(*np.nonzero(real), strict=True):
        i = packed["feature_index"][r, s]
        n = len(features[i]["input_ids"])
        start = packed["segment_starts"][r, s]
        assert packed["input_ids"][r, start] == 0  # the example's own <s>
        np.testing.assert_array_equal(packed["input_ids"][r, start:start + n],
                                      unpacked["input_ids"][i, :n])
        assert (packed["segment_ids"][r, start:start + n] == s + 1).all()
        assert packed["labels"][r, s] == unpacked["labels"][i]
    assert packed["attention_mask"].sum() == unpacked["attention_mask"].sum()
    np.testing.assert_array_equal(packed["attention_mask"], packed["segment_ids"] > 0)


def _params(model, batch):
    return model.init(jax.random.key(0), jnp.asarray(batch["input_ids"][:1]),
                      jnp.asarray(batch["attention_mask"][:1]))["params"]


def test_packed_logits_losses_and_gradients_equal_the_unpacked_batch(features):
    """Hugging Face's head (on ``<s>``, no pooler); jiant's pooler head: the trainer test."""
    packed, unpacked = _batches(features, 24)
    model = heads.XLMRForSequenceClassification(CONFIG, 3, use_pooler=False)
    params = _params(model, unpacked)

    def forward(p, batch):
        extra = {k: batch[k] for k in ("segment_ids", "segment_starts") if k in batch}
        return model.apply({"params": p}, batch["input_ids"], batch["attention_mask"], **extra)

    def loss(p, batch):
        logits = forward(p, batch)
        out = trainer.classification_loss(logits, batch)
        return out.loss_sum / out.weight, (out, logits)

    grad = jax.jit(jax.grad(loss, has_aux=True))  # one compile per batch shape
    got_grads, (got, got_logits) = grad(params, _device(packed))
    want_grads, (want, want_logits) = grad(params, _device(unpacked))
    got_logits, want_logits = np.asarray(got_logits), np.asarray(want_logits)
    assert got_logits.shape == (*packed["labels"].shape, 3) and want_logits.shape == (24, 3)
    real = packed["example_mask"] == 1
    order = packed["feature_index"][real]
    np.testing.assert_allclose(got_logits[real], want_logits[order], rtol=TOL, atol=TOL)
    xent = optax.softmax_cross_entropy_with_integer_labels
    per_packed = np.asarray(xent(got_logits[real], packed["labels"][real]))
    per_alone = np.asarray(xent(want_logits[order], unpacked["labels"][order]))
    np.testing.assert_allclose(per_packed, per_alone, rtol=TOL, atol=TOL)
    assert per_alone.std() > 1e-4  # different examples, different losses: the test can fail

    assert float(got.weight) == float(want.weight) == 24
    for key in ("loss_sum", "correct"):
        np.testing.assert_allclose(getattr(got, key), getattr(want, key), rtol=TOL, atol=TOL)
    flat_got, flat_want = jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)
    assert len(flat_got) == len(flat_want)
    for g, w in zip(flat_got, flat_want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=TOL)
    assert float(optax.tree.norm(want_grads)) > 1e-3
    # Without segment_ids the examples would see each other: the comparison can fail.
    mixed = {**_device(packed), "segment_ids": jnp.asarray(packed["attention_mask"])}
    mixed_logits = np.asarray(grad(params, mixed)[1][1])
    assert np.abs(mixed_logits[real] - want_logits[order]).max() > 1e-3


def test_trainer_step_on_packed_rows_equals_the_unpacked_step(features):
    """The real train step (AdamW, clipping; jiant's pooler head): the same loss, weight,
    accuracy and gradient norm from the packed batch as from the same examples one per row."""
    packed, unpacked = _batches(features, 16)
    tx, schedule = trainer.make_optimizer(learning_rate=1e-3, total_steps=10)
    part = partitioning.Partitioner(partitioning.create_mesh(devices=jax.devices()[:1]))
    tr = trainer.Trainer(heads.XLMRForSequenceClassification(CONFIG, 3), trainer.task_loss(
        "classification"), tx, schedule, part)
    results = []
    for batch in (packed, unpacked):
        batch = _device(batch)
        state = tr.init_state(jax.random.key(0), batch["input_ids"].shape)
        _, metrics = tr.train_step(state, batch)  # donates state
        results.append({k: float(v) for k, v in metrics.items()})
    got, want = results
    assert got["weight"] == want["weight"] == 16 and got["tokens"] == want["tokens"]
    for key in ("loss", "grad_norm", "correct"):
        np.testing.assert_allclose(got[key], want[key], rtol=TOL)
    assert got["grad_norm"] > 1e-3


def test_multitask_model_reads_packed_examples_like_the_single_task_model(features):
    packed, _ = _batches(features, 12)
    single = heads.XLMRForSequenceClassification(CONFIG, 3)
    multi = heads.XLMRMultiTask(CONFIG, (("xnli", "classification", 3), ("pos", "tagging", 5)))
    params = _params(multi, packed)
    batch = _device(packed)
    args = (batch["input_ids"], batch["attention_mask"])
    extra = {"segment_ids": batch["segment_ids"], "segment_starts": batch["segment_starts"]}
    got = multi.clone(task="xnli").apply({"params": params}, *args, **extra)
    want = single.apply({"params": {"roberta": params["roberta"], **params["xnli"]}}, *args,
                        **extra)
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match=r"with heads of kind \['tagging'\]"):
        multi.clone(task="pos").apply({"params": params}, *args, **extra)
    with pytest.raises(ValueError, match="needs segment_ids"):
        single.apply({"params": {"roberta": params["roberta"], **params["xnli"]}}, *args,
                     segment_starts=batch["segment_starts"])


def test_packed_rows_resume_exactly_and_cover_every_example_once_per_epoch(features):
    options = dict(length=LENGTH, seed=3, classification_packing=True, max_segments=4)
    one = FeatureBatcher(features, "classification", batch_size=8, **options)
    assert one.num_rows < len(features) / 2 and one.steps_per_epoch == -(-one.num_rows // 8)
    epoch = [one.batch(step) for step in range(one.steps_per_epoch)]
    slots = np.concatenate([b["feature_index"][b["example_mask"] == 1] for b in epoch])
    assert sorted(slots.tolist()) == list(range(len(features)))
    resumed = FeatureBatcher(features, "classification", batch_size=8, **options)
    for step in (5, 2, one.steps_per_epoch + 1):  # out of order, into the second epoch
        got, want = resumed.batch(step), one.batch(step)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    second = one.batch(one.steps_per_epoch)["feature_index"]
    assert not np.array_equal(second, epoch[0]["feature_index"])  # a new order each epoch
    hosts = [FeatureBatcher(features, "classification", batch_size=4,
                            shard_info=ShardInfo(i, 2), **options) for i in range(2)]
    for step in (0, 7):
        joined = np.concatenate([h.batch(step)["input_ids"] for h in hosts])
        np.testing.assert_array_equal(joined, one.batch(step)["input_ids"])


def test_packed_rows_with_buckets_cut_tokens_not_slots(features):
    options = dict(batch_size=2, length=LENGTH, seed=0, classification_packing=True,
                   max_segments=2)
    full = FeatureBatcher(features, "classification", **options)
    cut = FeatureBatcher(features, "classification", length_buckets=(96, 112), **options)
    widths = set()
    for step in range(6):
        a, b = full.batch(step), cut.batch(step)
        widths.add(b["input_ids"].shape[1])
        assert b["labels"].shape == a["labels"].shape == (2, 2)
        width = b["input_ids"].shape[1]
        np.testing.assert_array_equal(b["segment_ids"], a["segment_ids"][:, :width])
        np.testing.assert_array_equal(b["segment_starts"], a["segment_starts"])
    assert widths - {LENGTH}  # some batch is narrower than L


def test_bad_label_in_a_packed_row_names_its_examples(features):
    batcher = FeatureBatcher(features, "classification", batch_size=2, length=LENGTH,
                             classification_packing=True, max_segments=4,
                             origin=PL.origin("xnli.en", "dev", shared_data_dir(),
                                              allow_samples=True))
    batch = batcher.batch(0)
    host = {k: np.asarray(v).copy() for k, v in batch.items()}
    host["labels"][1, 1] = 7
    with pytest.raises(trainer.BadBatchError, match=r"packed row 1: example indices \[") as e:
        trainer.check_batch_values(host, kind="classification", num_labels=3,
                                   vocab_size=CONFIG.vocab_size, where="batch 0",
                                   source=batch.provenance.describe)
    assert "index [1, 1]" in str(e.value) and "NUM_LABELS=3" in str(e.value)
    expected = [features[i]["example_index"] for i in batcher.rows[batcher.indices(0)[1]]]
    assert str(expected) in str(e.value)


def test_packed_step_shape_and_pack_batch_errors(features):
    shape = trainer.StepShape("classification", 3, 4, 128, packed=True, segments=8)
    assert shape.shapes() == {"input_ids": (4, 128), "attention_mask": (4, 128),
                              "segment_ids": (4, 128), "labels": (4, 8),
                              "example_mask": (4, 8), "segment_starts": (4, 8)}
    with pytest.raises(ValueError, match="segments >= 1"):
        trainer.StepShape("classification", 3, 4, 128, packed=True)
    with pytest.raises(ValueError, match="more than max_segments=1"):
        pack_batch(features, [[0, 1]], LENGTH, 1)
    with pytest.raises(ValueError, match="past the row length"):
        pack_batch(features, [list(range(8))], LENGTH, 8)


def test_experiment_phase_2_packs_classification_rows_only(tmp_path):
    """``finetune={"classification_packing": True}``: the cell's FeatureBatcher packs a
    classification task's rows (epochs then count packed rows) and leaves tagging as it was;
    phase 0/1 refuse it; at its default the cell settings (fingerprints) do not change."""
    from xstilts.data.synthetic import SyntheticWorld
    from xstilts.experiment import cells
    from xstilts.experiment.grid import Phase, make_grid
    from xstilts.experiment.inputs import Inputs
    from xstilts.experiment.plan import plan

    SyntheticWorld(seed=0).write_files(tmp_path / "data" / "synthetic",
                                       sizes={"train": 48, "dev": 16, "test": 16})
    phase = {"steps": 2, "batch_size": 4, "learning_rate": 1e-3, "max_length": 64}
    settings = dict(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"),
                    model_config=CONFIG, intermediate={"baseline": None},
                    targets=["synthetic.paraphrase", "synthetic.pos"], seeds=[0],
                    english_config=None, spm_vocab_size=300, pretrain_mixture="synthetic.mlm",
                    intermediate_phase=phase)
    packing = {"classification_packing": True, "max_segments": 4}
    grid = make_grid(**settings, finetune={**phase, **packing})
    assert grid.finetune.batching()["classification_packing"] is True
    assert "classification_packing" not in Phase().batching()
    inputs = Inputs(grid)
    inputs.prepare_tokenizer()
    made = {name: inputs.task_batcher(name, "train", 128, 0, True, **grid.finetune.batching())(
        ShardInfo(0, 1), 4) for name in ("synthetic.paraphrase.en", "synthetic.pos.en")}
    pairs, tags = made["synthetic.paraphrase.en"], made["synthetic.pos.en"]
    assert pairs.packed and pairs.num_rows < len(pairs.features) / 1.5
    assert pairs.batch(0)["labels"].shape == (4, 4)
    assert not tags.packed and tags.num_rows == len(tags.features)
    with pytest.raises(ValueError, match="intermediate_phase: classification_packing is for "
                                         "phase 2"):
        make_grid(**{**settings, "intermediate_phase": {**phase, **packing}}, finetune=phase)
    plain = make_grid(**settings, finetune=phase)
    on = {j.model_dir: cells.job_settings(j) for j in plan(grid) if j.phase == "phase2"}
    off = {j.model_dir: cells.job_settings(j) for j in plan(plain) if j.phase == "phase2"}
    assert on and on.keys() == off.keys()
    for key, value in off.items():
        assert "classification_packing" not in value and "max_segments" not in value
        assert on[key] == {**value, **packing}


def test_dry_run_lowers_the_packed_phase_2_step(tmp_path):
    """The dry run's phase-2 step of a packing grid is the packed one (``[B, S]`` labels,
    ``segment_starts``) and lowers with the real Trainer."""
    from xstilts.experiment.dry_run import describe, job_shapes, lower_step
    from xstilts.experiment.grid import make_grid
    from xstilts.experiment.plan import plan

    phase = {"steps": 2, "batch_size": 4, "learning_rate": 1e-3, "max_length": 64}
    grid = make_grid(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"),
                     model_config=CONFIG, intermediate={"baseline": None},
                     targets=["pawsx"], seeds=[0], english_config=None,
                     intermediate_phase=phase,
                     finetune={**phase, "classification_packing": True})
    job = next(j for j in plan(grid) if j.phase == "phase2")
    (shape,) = job_shapes(job, [])
    assert shape.packed and shape.segments == 64 // 16
    assert shape.shapes()["segment_starts"] == (4, 4) and shape.shapes()["labels"] == (4, 4)
    assert "packed (<= 4 a row)" in describe(shape)
    part = partitioning.Partitioner(partitioning.create_mesh(devices=jax.devices()[:1]))
    info = lower_step(grid, shape, part)
    assert info["loss_shape"] == () and info["params"] > 0
