"""Trainer: losses, optimizer, microbatching, sharding invariance, exact resume, two processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_setup import (
    BATCH,
    LENGTH,
    NUM_LABELS,
    enable_compilation_cache,
    make_partitioner,
    run_train,
)

from xstilts import checkpoints, train, trainer
from xstilts.models import heads
from xstilts.models.xlmr import XLMRConfig

enable_compilation_cache()
WORKER = os.path.join(os.path.dirname(__file__), "train_worker.py")
STEPS = 20


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


def _softmax_xent(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return logz - np.take_along_axis(logits, labels[..., None], -1)[..., 0]


# Losses against brute-force numpy ------------------------------------------------------------
def test_classification_loss_weights_by_example_mask():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 3)).astype(np.float32), np.array([0, 2, 1, 1, 0])
    mask = np.array([1, 1, 0, 1, 0])
    out = trainer.classification_loss(jnp.asarray(logits), {
        "labels": jnp.asarray(labels), "example_mask": jnp.asarray(mask)})
    expected = (_softmax_xent(logits, labels) * mask).sum()
    np.testing.assert_allclose(float(out.loss_sum), expected, rtol=1e-6)
    assert float(out.weight) == 3.0
    assert float(out.correct) == float(((logits.argmax(-1) == labels) * mask).sum())


def test_token_loss_uses_label_mask_and_example_mask():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (2, 4))
    label_mask = np.array([[0, 1, 1, 0], [0, 1, 0, 0]])
    example_mask = np.array([1, 0])
    out = trainer.token_loss(jnp.asarray(logits), {
        "labels": jnp.asarray(labels), "label_mask": jnp.asarray(label_mask),
        "example_mask": jnp.asarray(example_mask)})
    w = label_mask * example_mask[:, None]
    np.testing.assert_allclose(float(out.loss_sum), (_softmax_xent(logits, labels) * w).sum(),
                               rtol=1e-6)
    assert float(out.weight) == 2.0


def test_span_loss_is_mean_of_start_and_end():
    rng = np.random.default_rng(2)
    s, e = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    start, end = np.array([1, 2, 3]), np.array([2, 2, 5])
    out = trainer.span_loss((jnp.asarray(s), jnp.asarray(e)), {
        "start_positions": jnp.asarray(start), "end_positions": jnp.asarray(end)})
    expected = ((_softmax_xent(s, start) + _softmax_xent(e, end)) / 2).sum()
    np.testing.assert_allclose(float(out.loss_sum), expected, rtol=1e-6)


# Optimizer ------------------------------------------------------------------------------------
def test_decay_mask_excludes_biases_and_layer_norm():
    model = heads.XLMRForSequenceClassification(XLMRConfig.tiny(), 3)
    ids = jnp.zeros((1, 4), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids + 1)["params"])
    mask = _flat(trainer.decay_mask(nn.unbox(boxed)))
    # The boxed (logically partitioned) tree used to derive optimizer shardings agrees.
    assert list(_flat(nn.unbox(trainer.decay_mask(boxed))).values()) == list(mask.values())
    assert mask["roberta/encoder/layer_0/intermediate/dense/kernel"]
    assert mask["roberta/embeddings/word_embeddings/embedding"]
    assert not mask["roberta/encoder/layer_0/intermediate/dense/bias"]
    assert not mask["roberta/encoder/layer_1/output/LayerNorm/scale"]
    assert not mask["roberta/embeddings/LayerNorm/bias"]
    assert not mask["classifier/out_proj/bias"]
    decayed = {k for k, v in mask.items() if v}
    assert all(k.endswith(("kernel", "embedding")) for k in decayed)


def test_schedule_is_linear_warmup_then_linear_decay():
    schedule = trainer.linear_warmup_decay(learning_rate=1e-3, total_steps=100,
                                           warmup_fraction=0.1)
    # Hugging Face get_linear_schedule_with_warmup, written out.
    def hf(step):
        return 1e-3 * (step / 10 if step < 10 else max(0.0, (100 - step) / 90))
    for step in (0, 1, 5, 10, 11, 55, 99, 100):
        np.testing.assert_allclose(float(schedule(step)), hf(step), rtol=1e-5, atol=1e-12)


def test_adamw_step_matches_hand_computation():
    tx, _ = trainer.make_optimizer(learning_rate=0.1, total_steps=10, warmup_fraction=0.0,
                                   max_grad_norm=1.0)
    params = {"dense": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])}}
    grads = {"dense": {"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([0.0])}}
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    g = np.array([3.0, 4.0]) / np.sqrt(25.0)  # clipped to global norm 1
    m, v = 0.1 * g, 0.001 * g**2
    adam = (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
    expected = np.array([1.0, -2.0]) - 0.1 * (adam + 0.01 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(np.asarray(new["dense"]["kernel"]), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new["dense"]["bias"]), [0.5])  # no decay, zero grad


# Microbatching -------------------------------------------------------------------------------
def test_microbatches_give_the_full_batch_update():
    config = XLMRConfig.tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = heads.XLMRForTokenClassification(config, 5)
    part = make_partitioner({"data": 1})
    # SGD with lr 1: the update is minus the gradient, so this compares the accumulated gradient
    # itself (AdamW would divide tiny gradient entries by their own magnitude and amplify
    # float32 summation-order noise on them).
    tx, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
    batch = next(train.synthetic_batches(shard_index=0, num_shards=1, batch_size=8,
                                         start_batch=1, task_type="tagging", length=LENGTH,
                                         num_labels=5))
    assert batch["example_mask"].sum() == 7 and batch["label_mask"].sum() > 0
    base = trainer.Trainer(model, trainer.token_loss, tx, schedule, part)
    init_state = base.init_state(jax.random.PRNGKey(3), (8, LENGTH))
    init = _flat(init_state.params)
    results = {}
    for k in (1, 4):
        tr = trainer.Trainer(model, trainer.token_loss, tx, schedule, part, num_microbatches=k)
        state = jax.tree.map(jnp.copy, init_state)  # the step donates its input state
        state, metrics = tr.train_step(state, part.host_local_to_global(batch, 8))
        results[k] = (_flat(state.params), jax.device_get(metrics))
    (p1, m1), (p4, m4) = results[1], results[4]
    for key in ("loss", "grad_norm", "weight", "correct"):
        np.testing.assert_allclose(m4[key], m1[key], rtol=1e-5)
    updates1 = {name: p1[name] - init[name] for name in p1}
    scale = max(np.abs(u).max() for u in updates1.values())
    assert scale > 1e-4
    for name, update1 in updates1.items():
        # atol: gradients that are zero in exact arithmetic (the attention key bias: softmax is
        # shift invariant) come out as ~1e-13 float noise in both runs.
        np.testing.assert_allclose(p4[name] - init[name], update1, rtol=1e-5, atol=1e-6 * scale,
                                   err_msg=name)
    with pytest.raises(ValueError, match="microbatch"):
        trainer.Trainer(model, trainer.token_loss, tx, schedule, part,
                        num_microbatches=3).check_batch(batch)


# Sharding invariance -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """20 straight steps: one device and a 2x2x2 (data, fsdp, tensor) mesh of 8 fake devices
    without dropout (the sharding comparison), and one device with dropout 0.1 (the resume
    reference: dropout makes the per-step RNG part of what must resume exactly)."""
    runs = {}
    for name, mesh, every, dropout in (("one", {"data": 1}, STEPS, 0.0),
                                       ("mesh", {"data": 2, "fsdp": 2, "tensor": 2}, 4, 0.0),
                                       ("dropout", {"data": 1}, STEPS, 0.1)):
        model_dir = str(tmp_path_factory.mktemp(f"ref_{name}"))
        spec = {"model_dir": model_dir, "mesh": mesh, "total_steps": STEPS,
                "save_every": every, "keep": 10, "dropout": dropout}
        result = run_train(spec)
        runs[name] = {"spec": spec, "history": result.history, "state": result.state}
    return runs


@pytest.mark.slow
def test_sharded_training_equals_one_device(reference_runs):
    one, mesh = reference_runs["one"], reference_runs["mesh"]
    losses_one = np.array([h["loss"] for h in one["history"]])
    losses_mesh = np.array([h["loss"] for h in mesh["history"]])
    assert len(losses_one) == STEPS and np.all(np.isfinite(losses_one))
    assert len(set(losses_one.tolist())) == STEPS  # a different batch / model every step
    np.testing.assert_allclose(losses_mesh, losses_one, rtol=1e-5)
    p_one, p_mesh = _flat(one["state"].params), _flat(mesh["state"].params)
    for name in p_one:
        np.testing.assert_allclose(p_mesh[name], p_one[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    kernel = mesh["state"].params["roberta"]["encoder"]["layer_0"]["intermediate"]["dense"][
        "kernel"]
    assert kernel.shape == (64, 128)
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert {s.data.shape for s in kernel.addressable_shards} == {(32, 64)}
    embed = mesh["state"].params["roberta"]["embeddings"]["word_embeddings"]["embedding"]
    assert {s.data.shape for s in embed.addressable_shards} == {(501, 32)}
    mu = mesh["state"].opt_state[1][0].mu["roberta"]["encoder"]["layer_0"]["intermediate"][
        "dense"]["kernel"]
    assert mu.sharding.spec == kernel.sharding.spec


def test_batch_not_divisible_by_data_shards_is_an_error():
    part = make_partitioner({"data": 2, "fsdp": 2, "tensor": 2})
    with pytest.raises(ValueError, match=r"global batch size 6 is not divisible by the 4 data"):
        part.check_batch_size(6)


# Step shape: the batch per kind (run, dry run and aot) -----------------------------------------
@pytest.mark.parametrize(("kind", "keys"), [
    ("classification", {"labels": (8,)}),
    ("multiple_choice", {"labels": (8,)}),
    ("tagging", {"labels": (8, 16), "label_mask": (8, 16)}),
    ("mlm", {"labels": (8, 16), "label_mask": (8, 16)}),
    ("qa", {"start_positions": (8,), "end_positions": (8,)}),
])
def test_step_shape_batch_per_kind(kind, keys):
    shape = trainer.StepShape(kind, 3, 8, 16, num_choices=4 if kind == "multiple_choice" else 1)
    lead = (8, 4, 16) if kind == "multiple_choice" else (8, 16)
    assert shape.input_shape == lead
    part = make_partitioner({"data": 2, "fsdp": 2, "tensor": 2})
    batch = shape.batch(part)
    assert {k: v.shape for k, v in batch.items()} == {
        "input_ids": lead, "attention_mask": lead, "example_mask": (8,), **keys}
    assert all(v.dtype == np.int32 for v in batch.values())
    for value in batch.values():  # rows over the data axes, every other dimension whole
        spec = value.sharding.spec
        assert spec[0] == ("data", "fsdp") and all(s is None for s in spec[1:])
        assert value.sharding.shard_shape(value.shape) == (2, *value.shape[1:])


def test_step_shape_input_shape_builds_the_state_for_its_batch():
    """A multiple-choice state initialised from ``input_shape`` takes the ``[B, C, L]`` batch."""
    shape = trainer.StepShape("multiple_choice", 2, 8, 16, num_choices=3)
    part = make_partitioner({"fsdp": 8})
    tx, schedule = trainer.make_optimizer(total_steps=10)
    tr = trainer.Trainer(train.build_model("multiple_choice", XLMRConfig.tiny()),
                         trainer.task_loss("multiple_choice"), tx, schedule, part)
    state = tr.abstract_state(shape.input_shape)
    batch = shape.batch(part)
    _, metrics = tr.partitioned_train_step(state, batch).lower(state, batch).out_info
    assert metrics["loss"].shape == ()


def test_step_shape_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match=r"unknown task type 'regression'"):
        trainer.StepShape("regression", 1, 8, 16)


# Exact resume after kill -9 (a checkpoint killed mid-write is never picked up) ----------------
def _wait_for(path: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}: "
                                 f"{proc.stderr.read().decode()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"worker never wrote {path}")
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_minus_9_mid_checkpoint_then_resume_is_exact(reference_runs, tmp_path):
    ref = reference_runs["dropout"]
    no_dropout = [h["loss"] for h in reference_runs["one"]["history"]]
    assert [h["loss"] for h in ref["history"]][1:] != no_dropout[1:]  # dropout is on
    model_dir = str(tmp_path / "run")
    marker = str(tmp_path / "blocked")
    spec = {**ref["spec"], "model_dir": model_dir, "stop_at": [None], "save_every": 5,
            "block_checkpoint": 15, "marker": marker}
    proc = subprocess.Popen([sys.executable, WORKER, json.dumps(spec)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    left = sorted(os.listdir(ckpt_dir))
    assert any(name.startswith("15.orbax-checkpoint-tmp") for name in left), left
    assert "15" not in left and "10" in left
    with open(os.path.join(model_dir, "train_metrics.jsonl")) as f:
        killed_history = [json.loads(line) for line in f]
    assert [h["step"] for h in killed_history[:15]] == list(range(1, 16))

    resumed = run_train({**spec, "model_dir": model_dir})  # resumes from step 10
    assert [h["step"] for h in resumed.history] == list(range(11, STEPS + 1))
    assert not any("tmp" in n for n in os.listdir(ckpt_dir))  # the torn write was cleaned up
    curve = [h["loss"] for h in killed_history[:10]] + [h["loss"] for h in resumed.history]
    assert curve == [h["loss"] for h in ref["history"]]  # bit-identical loss curve
    p_ref, p_res = _flat(ref["state"].params), _flat(resumed.state.params)
    for name in p_ref:
        np.testing.assert_array_equal(p_res[name], p_ref[name], err_msg=name)
    assert int(resumed.state.step) == STEPS


# Two processes (jax.distributed, gloo) -------------------------------------------------------
def _two_processes(spec: dict) -> list[subprocess.CompletedProcess]:
    """``spec`` run by two worker processes of one job (4 fake CPU devices each)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, WORKER, json.dumps({
            **spec, "devices": 4, "distributed": {"coordinator": f"127.0.0.1:{port}",
                                                  "num_processes": 2, "process_id": pid}})],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for pid in range(2)]
    out = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    return out


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_match_one_process(reference_runs, tmp_path):
    ref = reference_runs["mesh"]
    model_dir = str(tmp_path / "mp")
    for proc in _two_processes({**ref["spec"], "model_dir": model_dir, "stop_at": [2, 4],
                                "result": str(tmp_path / "mp_result")}):
        assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "mp_result.json") as f:
        out = json.load(f)
    assert out["process_count"] == 2
    assert [h["step"] for h in out["history"]] == [1, 2, 3, 4]  # 2 steps, resume, 2 more
    np.testing.assert_allclose([h["loss"] for h in out["history"]],
                               [h["loss"] for h in ref["history"][:4]], rtol=1e-5)
    assert sorted(checkpoints.Checkpointer(
        os.path.join(model_dir, "checkpoints"), read_only=True).all_steps()) == [2, 4]
    # Parameters after step 4 equal the one-process run's step-4 checkpoint.
    reference = checkpoints.Checkpointer(os.path.join(ref["spec"]["model_dir"], "checkpoints"),
                                         read_only=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=x.sharding),
                            ref["state"].params)
    expected = _flat(reference.restore_params(abstract, step=4))
    got = np.load(tmp_path / "mp_result.npz")
    assert set(got.files) == set(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    assert BATCH == 8 and NUM_LABELS == 3


# NaN / Inf -----------------------------------------------------------------------------------
def test_nan_loss_stops_naming_the_last_validated_checkpoint(tmp_path):
    spec = {"model_dir": str(tmp_path), "mesh": {"data": 1}, "total_steps": 6,
            "save_every": 1, "lr": 1e38}
    with pytest.raises(train.NonFiniteLossError,
                       match="last checkpoint validated by a finite next step") as info:
        run_train(spec)
    text = str(info.value)
    bad_step = int(re.search(r"at step (\d+)", text).group(1))
    ckpt = checkpoints.Checkpointer(tmp_path / "checkpoints", read_only=True)
    steps = ckpt.all_steps()
    # every step up to the bad one was saved; the one just before it was never followed by a
    # finite step, so the message steers to the step before that and names the later one
    assert steps and max(steps) == bad_step - 1 < 6
    assert f"validated by a finite next step is step {bad_step - 2} in" in text
    assert f"the later [{bad_step - 1}] were not" in text
    # the inputs were checked before each step: the message blames the optimisation, not them
    assert text.endswith("Every batch's token ids and labels were checked in range before its "
                         "step, so the cause is the optimisation: lower the learning rate (or "
                         "raise the warm-up)")
    with open(tmp_path / "train_metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert all(np.isfinite(h["loss"]) for h in logged) and len(logged) == max(steps)


def test_train_flops_count_by_hand():
    # tiny: hidden 64, intermediate 128, 2 layers; length 16.
    # matmul params per layer 4*64*64 + 2*64*128 = 32768 -> 2 layers 65536; x6 x16 tokens;
    # attention 12 * layers * hidden * L per token, x16 tokens.
    expected = 6 * 65536 * 16 + 12 * 2 * 64 * 16 * 16
    assert trainer.train_flops_per_example(XLMRConfig.tiny(), 16) == expected
    assert trainer.train_flops_per_example(XLMRConfig.tiny(), 16, num_choices=4) == 4 * expected
    mlm = trainer.train_flops_per_example(XLMRConfig.tiny(), 16, mlm=True)
    assert mlm == expected + 6 * 64 * 1002 * 16


@pytest.mark.slow
def test_two_processes_stop_together_on_changed_settings(reference_runs, tmp_path):
    """Only process 0 compares the settings: the other must stop with it, not wait for it in the
    first collective."""
    def launch(stop_at: int, lr: float) -> list[subprocess.CompletedProcess]:
        return _two_processes({**reference_runs["mesh"]["spec"], "lr": lr,
                               "model_dir": str(tmp_path / "mp"), "stop_at": [stop_at]})

    assert [p.returncode for p in launch(2, 1e-3)] == [0, 0]
    chief, other = launch(4, 5e-3)
    assert chief.returncode != 0 and other.returncode != 0
    assert "SettingsChangedError" in chief.stderr and "learning_rate" in chief.stderr
    assert "process 0 found settings that differ" in other.stderr, other.stderr[-2000:]
