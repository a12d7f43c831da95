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


def test_each_head_equals_its_single_task_model():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, CONFIG.vocab_size - 1, (2, 3, 10)).astype(np.int32)
    ids[..., 0], ids[..., -1] = 0, 2
    mask = np.ones_like(ids)
    mask[1, :, 7:] = 0
    ids = np.where(mask == 1, ids, 1)
    # Classification on the pooler (jiant) and on <s> (Hugging Face): same parameters.
    models = {pool: heads.XLMRMultiTask(CONFIG, HEADS, use_pooler=pool) for pool in (False, True)}
    singles = {(name, pool): train.build_model(kind, CONFIG, num_labels=n, use_pooler=pool)
               for name, kind, n in HEADS for pool in (False, True)}

    def inputs(name):
        return (ids, mask) if name == "swag.en" else (ids[:, 0], mask[:, 0])

    @jax.jit  # one compile instead of hundreds of eager ops
    def run(params):
        out = {}
        for (name, pool), single in singles.items():
            own = {"roberta": params["roberta"], **params[heads.head_key(name)]}
            out[name, pool] = (single.apply({"params": own}, *inputs(name)),
                               models[pool].clone(task=name).apply({"params": params},
                                                                   *inputs(name)))
        return out

    # Random parameters of the init shapes (compiling the init's RNG would cost ~10 s on CPU).
    shapes = nn_unbox(jax.eval_shape(models[False].init, jax.random.PRNGKey(0), ids[:, 0],
                                     mask[:, 0])["params"])
    leaves, treedef = jax.tree.flatten(shapes)
    params = jax.tree.unflatten(treedef, [
        rng.normal(0, 0.2, x.shape).astype(np.float32) for x in leaves])
    assert set(params) == {"roberta", "nli_en", "pos_en", "squad_en", "swag_en", "mlm_xx"}
    outputs = run(params)
    for (name, pool), single in singles.items():
        # The head's subtree has exactly the single-task model's structure beside the encoder.
        own = nn_unbox(jax.eval_shape(single.init, jax.random.PRNGKey(1), *inputs(name))[
            "params"])
        assert jax.tree.map(np.shape, own) == jax.tree.map(
            np.shape, {"roberta": params["roberta"], **params[heads.head_key(name)]}), name
        expected, got = outputs[name, pool]
        for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
            assert g.shape == e.shape and g.shape[0] == 2
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-6,
                                       err_msg=f"{name} use_pooler={pool}")
    assert outputs["swag.en", False][1].shape == (2, 3)
    assert not np.allclose(outputs["nli.en", False][1], outputs["nli.en", True][1])


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
# The heads, shapes and optimizer of the grid test's phase 1 below (synthetic.intermediate.nli.en
# +mlm, batch 8, length 48, lr 1e-3, 6 steps): the init and the jitted steps compile once for
# both tests (XLA:CPU takes ~10 s per compile on 2 cores; the persistent cache shares them).
TRAIN_HEADS = {"synthetic.nli": ("classification", 3), "synthetic.mlm": ("mlm", 2)}
TASK_HEADS = {"nli.en": "synthetic.nli", "mlm.xa": "synthetic.mlm"}
LR, WD, WARMUP, STEPS, LENGTH = 1e-3, 0.01, 0.1, 6, 48
SCHEDULE = ("nli.en", "nli.en", "nli.en", "mlm.xa", "nli.en", "mlm.xa")  # no MLM before step 3


def _task_at(index: int) -> str:
    return SCHEDULE[index]


def _batch(task: str, index: int, seed: int, **kwargs) -> dict[str, np.ndarray]:
    kind = TRAIN_HEADS[TASK_HEADS[task]][0]
    return next(train.synthetic_batches(**{**kwargs, "start_batch": index}, task_type=kind,
                                        length=LENGTH, num_labels=3, seed=seed))


def _multitask_batches(*, start_batch, **kwargs):
    for index in range(start_batch, STEPS):
        yield _task_at(index), _batch(_task_at(index), index, 3, **kwargs)


def _eval_batches(*, start_batch, **kwargs):
    """Batch 0 of nli (8 real examples), then batch 1 of mlm (its last example is padding)."""
    for index, task in enumerate(("nli.en", "mlm.xa")):
        yield task, _batch(task, index, 4, **kwargs)


def _run(model_dir, *, stop_at_step=None, train_batches=_multitask_batches, eval_batches=None,
         num_microbatches=1):
    optimizer = functools.partial(trainer.make_optimizer, learning_rate=LR, weight_decay=WD,
                                  warmup_fraction=WARMUP)
    return train.train(
        model_dir=str(model_dir), model_config=CONFIG, total_steps=STEPS, batch_size=8,
        train_batches=train_batches, heads=TRAIN_HEADS, task_heads=TASK_HEADS, use_pooler=False,
        partitioner=make_partitioner({"data": 1}), optimizer=optimizer,
        checkpoint=checkpoints.CheckpointConfig(
            save_every_steps=3, keep=1, async_save=False,
            best_metric="eval/accuracy" if eval_batches else None),
        eval_batches=eval_batches, eval_every_steps=3 if eval_batches else 0,
        seed=0, log_every_steps=2, stop_at_step=stop_at_step, progress=False,
        num_microbatches=num_microbatches)


def _initial_params() -> dict[str, np.ndarray]:
    """The params ``train`` starts from (seed 0), by its own init path."""
    model = heads.XLMRMultiTask(CONFIG, train.head_spec(TRAIN_HEADS), use_pooler=False)
    tx, schedule = trainer.make_optimizer(total_steps=STEPS)
    t = trainer.Trainer(model, trainer.task_loss("classification"), tx, schedule,
                        make_partitioner({"data": 1}))
    return _flat(t.init_state(jax.random.PRNGKey(0), (8, LENGTH)).params)


def test_multitask_train_heads_resume_and_log(tmp_path):
    straight = _run(tmp_path / "straight")
    first = _initial_params()
    last = _flat(straight.state.params)
    assert set(first) == set(last)
    assert {k.split("/")[0] for k in first} == {"roberta", "synthetic_nli", "synthetic_mlm"}

    # Every step trained the task the data named, and the log says which (and its head).
    records = [json.loads(line) for line in
               (tmp_path / "straight" / "train_metrics.jsonl").read_text().splitlines()]
    assert [r["task"] for r in records] == [_task_at(i) for i in range(STEPS)]
    assert [r["head"] for r in records] == [TASK_HEADS[r["task"]] for r in records]
    assert all(np.isfinite(r["loss"]) for r in records)

    # Stopped at step 3 and resumed = the straight run (data position and RNG restored);
    # evaluating on the way (steps 3 and 6) changes nothing.
    stopped = _run(tmp_path / "resumed", stop_at_step=3, eval_batches=_eval_batches)
    assert stopped.step == 3
    at_3 = _flat(stopped.state.params)

    # The drawn head and the encoder moved; the MLM head, not drawn in steps 1-3, got zero
    # gradients, so AdamW's moments stay 0 and only decoupled weight decay moved it:
    # p <- p (1 - lr_t * wd) per step on decayed leaves (not biases/LayerNorm), nothing on others.
    for prefix in ("synthetic_nli/", "roberta/encoder/"):
        assert any(not np.allclose(first[k], at_3[k]) for k in first if k.startswith(prefix))
    decayed = _flat(trainer.decay_mask(jax.tree.map(np.zeros_like, stopped.state.params)))
    undrawn = [k for k in first if k.startswith("synthetic_mlm/")]
    assert {bool(decayed[k]) for k in undrawn} == {True, False}
    schedule = trainer.linear_warmup_decay(learning_rate=LR, total_steps=STEPS,
                                           warmup_fraction=WARMUP)
    for k in undrawn:
        if not decayed[k]:
            np.testing.assert_array_equal(at_3[k], first[k], err_msg=k)
            continue
        expected = first[k].copy()
        for step in range(3):
            expected = expected - np.float32(schedule(step)) * (np.float32(WD) * expected)
        np.testing.assert_allclose(at_3[k], expected, rtol=1e-6, atol=1e-9, err_msg=k)
        assert not np.allclose(at_3[k], first[k], rtol=5e-6, atol=0), k  # it did decay
    # ... and after it was drawn (steps 4 and 6) it trained.
    assert any(not np.allclose(at_3[k], last[k]) for k in undrawn)

    resumed = _run(tmp_path / "resumed", eval_batches=_eval_batches)
    assert resumed.step == STEPS and [h["task"] for h in resumed.history] == \
        [_task_at(i) for i in range(3, STEPS)]
    again = _flat(resumed.state.params)
    for k in last:
        np.testing.assert_allclose(again[k], last[k], rtol=1e-6, atol=1e-7, err_msg=k)

    # Evaluation per head (padding examples excluded) and the unweighted mean over heads.
    ckpt = checkpoints.Checkpointer(tmp_path / "resumed" / "checkpoints", read_only=True)
    scores = ckpt.metrics(STEPS)
    ckpt.manager.close()
    assert scores["eval/synthetic.nli/weight"] == 8  # examples
    mlm_eval = _batch("mlm.xa", 1, 4, shard_index=0, num_shards=1, batch_size=8)
    assert scores["eval/synthetic.mlm/weight"] == (mlm_eval["label_mask"][:7]).sum()  # tokens
    assert set(scores) == {f"eval/{h}{m}" for h in ("", "synthetic.nli/", "synthetic.mlm/")
                           for m in ("loss", "accuracy", "weight")} - {"eval/weight"}
    for metric in ("loss", "accuracy"):
        assert scores[f"eval/{metric}"] == pytest.approx(
            (scores[f"eval/synthetic.nli/{metric}"] + scores[f"eval/synthetic.mlm/{metric}"]) / 2)


def test_multitask_microbatches_give_the_full_batch_steps(tmp_path):
    """Each head's step accumulates its microbatches (loss and weight summed) like one batch:
    4 x 2 rows per step end where 1 x 8 rows do, for both heads (the MLM batches hold different
    numbers of masked tokens per microbatch; dropout is off)."""
    full = _run(tmp_path / "full")
    micro = _run(tmp_path / "micro", num_microbatches=4)
    np.testing.assert_allclose([h["loss"] for h in micro.history],
                               [h["loss"] for h in full.history], rtol=1e-5)
    assert [h["task"] for h in micro.history] == list(SCHEDULE)
    a, b = _flat(micro.state.params), _flat(full.state.params)
    for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_multitask_batches_must_name_a_known_task(tmp_path):
    def unknown(**kwargs):
        yield "ner.en", next(train.synthetic_batches(**kwargs, task_type="tagging"))

    with pytest.raises(ValueError, match=r"train batch 0: task 'ner.en' has no head: heads "
                                         r"\['synthetic.mlm', 'synthetic.nli'\]"):
        _run(tmp_path, train_batches=unknown)


# The grid driver: phase 1 on a mixture of kinds, then phase 2 from its encoder ----------------
from test_experiment import _grid, data_dir  # noqa: E402, F401  (fixture)

from xstilts import experiment  # noqa: E402
from xstilts.data import tasks  # noqa: E402
from xstilts.experiment.finetune import run_finetune  # noqa: E402
from xstilts.experiment.intermediate import run_intermediate  # noqa: E402
from xstilts.experiment.runtime import Runtime  # noqa: E402


def test_mixture_heads_group_tasks_by_head():
    assert experiment.mixture_kind("synthetic.intermediate.nli.multilingual") == \
        ("classification", 3, 128)  # one kind: the single-head path, as before
    for mixture in ("synthetic.intermediate.all.en", "synthetic.intermediate.nli.en+mlm",
                    "intermediate.all9.en", "intermediate.mnli.en+mlm"):
        assert experiment.mixture_kind(mixture) is None, mixture
    heads_, task_heads = experiment.mixture_heads("synthetic.intermediate.all.multilingual+mlm")
    assert heads_ == {"synthetic.nli": ("classification", 3), "synthetic.qa": ("qa", 2),
                      "synthetic.mlm": ("mlm", 2)}
    assert set(task_heads) == set(tasks.mixture_tasks(
        "synthetic.intermediate.all.multilingual+mlm"))
    assert task_heads["synthetic.qa.xc"] == "synthetic.qa"
    assert tasks.mixture_tasks("synthetic.intermediate.all.en") == ["synthetic.nli.en",
                                                                     "synthetic.qa.en"]


def test_grid_with_a_multi_head_intermediate_mixture(tmp_path, data_dir):  # noqa: F811
    """Phase 1 on NLI + MLM (two heads), then phase 2 from its encoder, as ``run()`` calls
    them (the baseline's cells are the single-head path that test_experiment.py covers)."""
    mixture = "synthetic.intermediate.nli.en+mlm"
    grid = _grid(tmp_path, data_dir, intermediate={"baseline": None, "nli_mlm": mixture},
                 retrieval=[], pretrain=None,
                 intermediate_phase={"steps": 6, "batch_size": 8, "learning_rate": 1e-3,
                                     "max_length": 48, "save_every_steps": 6},
                 finetune={"steps": 2, "batch_size": 8, "learning_rate": 1e-3,
                           "max_length": 48, "save_every_steps": 2})
    rt = Runtime.create(grid, make_partitioner({"data": 1}))
    rt.inputs.prepare_tokenizer()
    jobs = {(j.phase, j.config): j for j in experiment.plan(grid)}
    job = jobs["phase1", "nli_mlm"]
    assert job.kind == "multitask" and job.init_from is None
    run_intermediate(rt, job)

    phase1 = tmp_path / "phase1" / "nli_mlm" / "seed0"
    encoder = rt.path(job.checkpoints)
    assert encoder == str(phase1 / "checkpoints") and (phase1 / "DONE").is_file()
    records = [json.loads(line) for line in
               (phase1 / "train_metrics.jsonl").read_text().splitlines()]
    drawn = [r["task"] for r in records]
    assert len(drawn) == 6 and set(drawn) <= set(tasks.mixture_tasks(mixture))
    assert {r["head"] for r in records} == {"synthetic.nli", "synthetic.mlm"}  # both trained
    ckpt = checkpoints.Checkpointer(encoder, read_only=True)
    shapes = ckpt.metadata()["param_shapes"]
    ckpt.manager.close()
    assert {k.split("/")[0] for k in shapes} == {"roberta", "synthetic_nli", "synthetic_mlm"}
    assert shapes["synthetic_nli/classifier/out_proj/kernel"] == [64, 3]

    # Phase 2 fine-tunes a fresh head on that encoder and scores every language.
    cell = jobs["phase2", "nli_mlm"]
    assert (cell.source, cell.targets, cell.init_from) == (
        "synthetic.paraphrase.en", ("synthetic.paraphrase",), job.checkpoints)
    rows = run_finetune(rt, cell)
    got = {r["language"] for r in rows if r["metric"] == "accuracy" and r["split"] == "test"}
    assert got == {"en", "xa", "xb", "xc", "xd"}
    assert all(r["config"] == "nli_mlm" and 0.0 <= r["value"] <= 100.0 for r in rows)


def test_dry_run_lowers_each_head_of_a_multi_head_mixture(tmp_path):
    grid = _grid(tmp_path, tmp_path, intermediate={"baseline": None,
                                                   "all": "synthetic.intermediate.all.en"},
                 retrieval=[], pretrain=None)
    result = experiment.dry_run(grid, make_partitioner({"data": 1}))
    multi = {s.head: (s, info) for s, info in result.steps.items() if s.heads}
    assert set(multi) == {"synthetic.nli", "synthetic.qa"}
    shape, info = multi["synthetic.qa"]
    assert (shape.kind, shape.length, shape.heads) == (
        "qa", 48, (("synthetic.nli", "classification", 3), ("synthetic.qa", "qa", 2)))
    # The shared state holds the encoder and both heads: classifier dense + out_proj, qa_outputs.
    h = CONFIG.hidden_size
    single = {s.kind: i for s, i in result.steps.items() if not s.heads}["classification"]
    encoder = single["params"] - (h * h + h + h * 2 + 2)  # phase 2: paraphrase, 2 labels
    assert info["params"] == encoder + (h * h + h + h * 3 + 3) + (h * 2 + 2)
    assert info["used_by"] == {"phase1 all"} and info["loss_shape"] == ()
