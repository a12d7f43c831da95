"""Checkpoint selection on each task's official metric (seqeval F1 for tagging), ties to the
earlier step, and patience, through the experiment's own phase-2 path."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_experiment import _grid, data_dir  # noqa: F401  (fixture)

from xstilts import checkpoints, experiment, partitioning
from xstilts import trainer as trainer_lib
from xstilts.data import tasks
from xstilts.evals import metrics
from xstilts.experiment.finetune import english_dev_evaluator, factory, run_finetune
from xstilts.experiment.runtime import Runtime

NER = tasks.get_task("synthetic.ner.en")


def _scripted_optimizer(biases: np.ndarray):
    """An optax transformation that ignores gradients and, at update k, sets the tagging
    classifier to kernel 0 and bias ``biases[k]``: every token gets one chosen tag."""
    num_labels = biases.shape[1]

    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(updates, count, params):
        target = jnp.asarray(biases)[jnp.minimum(count, len(biases) - 1)]

        def move(path, p):
            name = jax.tree_util.keystr(path)
            if "classifier" in name and p.shape[-1:] == (num_labels,):
                return (target if p.ndim == 1 else jnp.zeros_like(p)) - p
            return jnp.zeros_like(p)

        return jax.tree_util.tree_map_with_path(move, params), count + 1

    def make(total_steps: int):
        return optax.GradientTransformation(init, update), optax.constant_schedule(0.0)

    return make


def _one_tag(tag: str) -> np.ndarray:
    bias = np.full(len(NER.labels), -10.0, np.float32)
    bias[NER.labels.index(tag)] = 10.0
    return bias


@pytest.fixture
def runtime(tmp_path, data_dir):  # noqa: F811
    grid = _grid(tmp_path, data_dir, targets=["synthetic.ner"], retrieval=[],
                 finetune={"steps": 3, "batch_size": 8, "max_length": 48,
                           "eval_every_steps": 1, "save_every_steps": 1})
    rt = Runtime.create(grid, partitioning.Partitioner(
        partitioning.create_mesh(devices=jax.devices()[:1])))
    rt.inputs.prepare_tokenizer()
    rt.fit_vocab()
    (job,) = [j for j in experiment.plan(grid) if j.phase == "phase2"]
    return rt, dataclasses.replace(job, init_from=None)  # a random encoder: only the head moves


def test_tagging_selection_keeps_the_f1_best_not_the_accuracy_best(runtime, monkeypatch):
    rt, job = runtime
    assert job.selection == "f1_seqeval"
    # Step 1 and 3 tag every word "O"; step 2 tags every word "B-PER".
    script = np.stack([_one_tag("O"), _one_tag("B-PER"), _one_tag("O")])
    monkeypatch.setattr(trainer_lib, "make_optimizer", lambda **kw: _scripted_optimizer(
        script)(kw["total_steps"]))
    rows = run_finetune(rt, job)

    # The two metrics disagree on the English dev set: "O" everywhere is the accuracy best
    # (most words are O), "B-PER" everywhere the F1 best (O everywhere finds no entity).
    gold = [list(e["tags"]) for e in rt.inputs.examples("synthetic.ner.en", "dev")]
    words = [[t for t in s] for s in gold]
    by_tag = {tag: ([[tag] * len(s) for s in words]) for tag in ("O", "B-PER")}
    flat = [t for s in gold for t in s]
    accuracy = {tag: metrics.accuracy(flat, [tag] * len(flat))["accuracy"] for tag in by_tag}
    f1 = {tag: metrics.tagging_f1(gold, pred)["f1"] for tag, pred in by_tag.items()}
    assert accuracy["O"] > accuracy["B-PER"] and f1["B-PER"] > f1["O"] == 0.0

    cell = rt.run_dir / job.model_dir
    ckpt = checkpoints.Checkpointer(cell / "checkpoints", read_only=True)
    logged = {s: ckpt.metrics(s) for s in ckpt.all_steps()}
    ckpt.manager.close()
    assert logged[2]["eval/f1"] == pytest.approx(f1["B-PER"])  # the evaluator is seqeval's
    selection = json.loads((cell / "selection.json").read_text())
    assert (selection["best_step"], selection["key"]) == (2, "eval/f1")
    en_dev = [r for r in rows if (r["language"], r["split"], r["metric"]) == ("en", "dev", "f1")]
    assert [r["step"] for r in en_dev] == [2]
    assert en_dev[0]["value"] == pytest.approx(f1["B-PER"])  # the kept checkpoint is step 2


def test_ties_keep_the_earlier_step_and_patience_stops(runtime, monkeypatch):
    rt, job = runtime
    job = dataclasses.replace(job, settings=dataclasses.replace(job.settings, steps=6,
                                                                patience=2))
    script = np.stack([_one_tag("B-PER"), _one_tag("B-PER"), _one_tag("O"), _one_tag("O"),
                       _one_tag("B-PER"), _one_tag("B-PER")])
    monkeypatch.setattr(trainer_lib, "make_optimizer", lambda **kw: _scripted_optimizer(
        script)(kw["total_steps"]))
    run_finetune(rt, job)
    cell = rt.run_dir / job.model_dir
    selection = json.loads((cell / "selection.json").read_text())
    # Steps 1 and 2 tie (same predictions): the earlier is kept. A tie is no improvement
    # (jiant), step 3 is worse: two evaluations without improvement, so patience 2 stops at
    # step 3 and steps 4-6 never run.
    assert selection["best_step"] == 1
    assert selection["trained_steps"] == 3 and selection["total_steps"] == 6
    lines = (cell / "train_metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]

    # A rerun of the stopped run does not train on (the stop is in the checkpoint).
    ckpt = checkpoints.Checkpointer(cell / "checkpoints", read_only=True)
    assert ckpt.metadata()["early_stopping"]["stopped"] is True
    ckpt.manager.close()
    # The same cell's settings (its batches and evaluator): other ones would be a changed
    # resume, which stops naming the difference (run_settings).
    spec = tasks.get_task(job.source)
    batches = factory(rt.inputs.task_batcher(job.source, "train", job.length, job.seed, True))
    result = rt.train(job, train_batches=batches, total_steps=6,
                      num_labels=len(NER.labels), best_metric="eval/f1",
                      evaluator=english_dev_evaluator(rt, job, spec, len(NER.labels)))
    assert result.step == 3 and result.history == []
