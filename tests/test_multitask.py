"""Multi-task (multi-head) intermediate training: the all-heads model, ``train(heads=...)`` and
a phase-1 mixture of task kinds run end to end by the grid driver."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
from train_setup import enable_compilation_cache, make_partitioner

from xstilts import checkpoints, train, trainer
from xstilts.models import heads
from xstilts.models.xlmr import XLMRConfig

enable_compilation_cache()
CONFIG = XLMRConfig.tiny(num_hidden_layers=1, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


# The model -----------------------------------------------------------------------------------
HEADS = (("nli.en", "classification", 3), ("pos.en", "tagging", 5), ("squad.en", "qa", 2),
         ("swag.en", "multiple_choice", 2), ("mlm.xx", "mlm", 2))


@pytest.mark.parametrize("use_pooler", [False, True])
def test_each_head_equals_its_single_task_model(use_pooler):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, CONFIG.vocab_size - 1, (2, 3, 10)).astype(np.int32)
    ids[..., 0], ids[..., -1] = 0, 2
    mask = np.ones_like(ids)
    mask[1, :, 7:] = 0
    ids = np.where(mask == 1, ids, 1)
    model = heads.XLMRMultiTask(CONFIG, HEADS, use_pooler=use_pooler)
    params = jax.tree.map(np.asarray, nn_unbox(model.init(jax.random.PRNGKey(0), ids[:, 0],
                                                          mask[:, 0])["params"]))
    assert set(params) == {"roberta", "nli_en", "pos_en", "squad_en", "swag_en", "mlm_xx"}
    for name, kind, num_labels in HEADS:
        single = train.build_model(kind, CONFIG, num_labels=num_labels, use_pooler=use_pooler)
        key = heads.head_key(name)
        x, m = (ids, mask) if kind == "multiple_choice" else (ids[:, 0], mask[:, 0])
        # The head's subtree has exactly the single-task model's structure beside the encoder.
        own = nn_unbox(jax.eval_shape(single.init, jax.random.PRNGKey(1), x, m)["params"])
        assert jax.tree.map(np.shape, own) == jax.tree.map(
            np.shape, {"roberta": params["roberta"], **params[key]}), name
        expected = single.apply({"params": {"roberta": params["roberta"], **params[key]}}, x, m)
        got = model.clone(task=name).apply({"params": params}, x, m)
        for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
            assert g.shape == e.shape
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-6,
                                       err_msg=name)


def nn_unbox(tree):
    import flax.linen as nn

    return nn.unbox(tree)


def test_head_names_are_checked():
    assert heads.head_key("intermediate.mnli.en") == "intermediate_mnli_en"
    with pytest.raises(ValueError, match="clashes with 'a.b'"):
        heads.XLMRMultiTask(CONFIG, (("a.b", "qa", 2), ("a_b", "qa", 2)))
    with pytest.raises(ValueError, match="clashes with roberta"):
        heads.XLMRMultiTask(CONFIG, (("roberta", "qa", 2),))
    with pytest.raises(ValueError, match="kind 'span'"):
        heads.XLMRMultiTask(CONFIG, (("a", "span", 2),))
    with pytest.raises(ValueError, match="'c' is not one of the heads"):
        heads.XLMRMultiTask(CONFIG, (("a", "qa", 2),), task="c")


# train(heads=...) ---------------------------------------------------------------------------
TRAIN_HEADS = {"cls": ("classification", 3), "qa": ("qa", 2), "tag": ("tagging", 4)}
LENGTHS = {"cls": 16, "qa": 24}
LR, WD, STEPS = 3e-3, 0.1, 6


def _task_at(index: int) -> str:
    return "qa" if index % 3 == 2 else "cls"  # cls cls qa cls cls qa; "tag" is never drawn


def _multitask_batches(*, shard_index, num_shards, batch_size, start_batch):
    index = start_batch
    while True:
        task = _task_at(index)
        batch = next(train.synthetic_batches(
            shard_index=shard_index, num_shards=num_shards, batch_size=batch_size,
            start_batch=index, task_type={"cls": "classification"}.get(task, task),
            length=LENGTHS[task], num_labels=3, seed=3))
        yield task, batch
        index += 1


def _run(model_dir, *, stop_at_step=None, train_batches=_multitask_batches):
    optimizer = functools.partial(trainer.make_optimizer, learning_rate=LR, weight_decay=WD,
                                  warmup_fraction=0.0)
    return train.train(
        model_dir=str(model_dir), model_config=CONFIG, total_steps=STEPS, batch_size=8,
        train_batches=train_batches, heads=TRAIN_HEADS, use_pooler=False,
        partitioner=make_partitioner({"data": 1}), optimizer=optimizer,
        checkpoint=checkpoints.CheckpointConfig(save_every_steps=2, keep=2, async_save=False),
        seed=0, log_every_steps=2, stop_at_step=stop_at_step, progress=False)


def _initial_params(model_dir) -> dict[str, np.ndarray]:
    """The params ``train`` starts from (seed 0), via its own init path (a 0-step-run stand-in)."""
    model = heads.XLMRMultiTask(CONFIG, train.head_spec(TRAIN_HEADS), use_pooler=False)
    tx, schedule = trainer.make_optimizer(total_steps=STEPS)
    t = trainer.Trainer(model, trainer.task_loss("classification"), tx, schedule,
                        make_partitioner({"data": 1}))
    return _flat(t.init_state(jax.random.PRNGKey(0), (8, 16)).params)


def test_multitask_train_heads_resume_and_log(tmp_path):
    straight = _run(tmp_path / "straight")
    first = _initial_params(tmp_path)
    last = _flat(straight.state.params)
    assert set(first) == set(last) and any(k.startswith("tag/") for k in first)

    # Every step trained the task the data named, and the log says which.
    records = [json.loads(line) for line in
               (tmp_path / "straight" / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["task"] for r in records] == [_task_at(i) for i in range(STEPS)]
    assert [r["head"] for r in records] == [r["task"] for r in records]
    assert all(np.isfinite(r["loss"]) for r in records)

    # The drawn heads and the encoder moved; the never-drawn head got zero gradients, so AdamW's
    # moments stay 0 and only decoupled weight decay moves it: p <- p (1 - lr_t * wd) per step on
    # decayed leaves (not biases/LayerNorm), nothing at all on the others.
    for prefix in ("cls/", "qa/", "roberta/encoder/"):
        assert any(not np.allclose(first[k], last[k]) for k in first if k.startswith(prefix))
    decayed = _flat(trainer.decay_mask(jax.tree.map(np.zeros_like, straight.state.params)))
    tag = [k for k in first if k.startswith("tag/")]
    schedule = trainer.linear_warmup_decay(learning_rate=LR, total_steps=STEPS,
                                           warmup_fraction=0.0)
    assert {bool(decayed[k]) for k in tag} == {True, False}
    for k in tag:
        expected = first[k].copy()
        if decayed[k]:
            for step in range(STEPS):  # linear decay from LR to 0 (no warm-up)
                lr = np.float32(schedule(step))
                expected = expected - lr * (np.float32(WD) * expected)
        np.testing.assert_allclose(last[k], expected, rtol=1e-6, atol=1e-7, err_msg=k)
        if not decayed[k]:
            np.testing.assert_array_equal(last[k], first[k])

    # Stopped at step 3 and resumed = the straight run (data position and RNG restored).
    stopped = _run(tmp_path / "resumed", stop_at_step=3)
    assert stopped.step == 3
    resumed = _run(tmp_path / "resumed")
    assert resumed.step == STEPS and [h["task"] for h in resumed.history] == \
        [_task_at(i) for i in range(3, STEPS)]
    again = _flat(resumed.state.params)
    for k in last:
        np.testing.assert_allclose(again[k], last[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_multitask_batches_must_name_a_known_task(tmp_path):
    def unknown(**kwargs):
        yield "ner", next(train.synthetic_batches(**kwargs, task_type="tagging"))

    with pytest.raises(ValueError, match=r"train batch 0: task 'ner' has no head: heads "
                                         r"\['cls', 'qa', 'tag'\]"):
        _run(tmp_path, train_batches=unknown)
