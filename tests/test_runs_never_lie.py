"""Issue 18, "runs that never lie": bad input and a second writer stop with a message that names
what is wrong, instead of a run that trains on a wrong answer and exits 0.

Real ``python -m xstilts.train`` processes where the issue used them (labels out of range, a
misspelt macro, two writers and a ``kill -9``); each stops before any compile.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xstilts import checkpoints, fingerprint, gin_utils, partitioning, run_settings, train, trainer
from xstilts.models import convert
from xstilts.models.xlmr import XLMRConfig, XLMRModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FINETUNE = ["models/xlmr_tiny.gin", "runs/finetune.gin"]


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _cli(model_dir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xstilts.train",
            *[f"--gin_file={f}" for f in TINY_FINETUNE],
            f"--gin.MODEL_DIR='{model_dir}'", "--gin.INIT_ENCODER_FROM=None",
            "--gin.TASK_TYPE='classification'", "--gin.NUM_LABELS=3", "--gin.BATCH_SIZE=8",
            "--gin.TRAIN_BATCHES=@train_script.synthetic_batches",
            "--gin_bindings=train_script.synthetic_batches.length = 16", *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)


# 1. labels and token ids ---------------------------------------------------------------------
def test_labels_past_num_labels_stop_the_cli_naming_batch_and_range(tmp_path):
    # The run: synthetic labels up to 5 with NUM_LABELS=3 trained and exited 0.
    proc = _run(_cli(tmp_path / "run", "--gin.TRAIN_STEPS=4",
                     "--gin_bindings=train_script.synthetic_batches.num_labels = 6"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert ("BadBatchError: train batch 0 (from synthetic_batches, which records no task or "
            "file): classification labels hold") in proc.stderr
    assert "NUM_LABELS=3 expects labels in [0, 3)" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written (the lock is gone too)


def _batch(**overrides):
    batch = {"input_ids": np.array([[0, 7, 2, 1], [0, 9, 8, 2]], np.int32),
             "attention_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int32),
             "example_mask": np.array([1, 1], np.int32), "labels": np.array([2, 0], np.int32)}
    return {**batch, **overrides}


def _check(batch, kind="classification", num_labels=3):
    trainer.check_batch_values(batch, kind=kind, num_labels=num_labels, vocab_size=10,
                               where="train batch 5 (step 6)", max_length=8)


def test_missing_and_out_of_range_labels_are_errors_padding_rows_are_not():
    _check(_batch())
    # -1 on a padding row (example_mask 0) is the pipeline's masked value: legal.
    _check(_batch(labels=np.array([2, -1]), example_mask=np.array([1, 0])))
    with pytest.raises(trainer.BadBatchError, match=(
            r"^train batch 5 \(step 6\): classification labels hold 1 value\(s\) \[-1\], the "
            r"first at index 1 on real rows; NUM_LABELS=3 expects labels in \[0, 3\) \(-1 is a "
            r"missing label")):
        _check(_batch(labels=np.array([2, -1])))
    with pytest.raises(trainer.BadBatchError, match=r"labels hold 2 value\(s\) \[3, 6\], the "
                                                    r"first at index 0"):
        _check(_batch(labels=np.array([3, 6])))
    # multiple choice: the label indexes the choices ([B, C, L] input_ids, C = 2)
    mc = {"input_ids": np.zeros((2, 2, 4), np.int32), "attention_mask": np.ones((2, 2, 4)),
          "labels": np.array([1, 2])}
    with pytest.raises(trainer.BadBatchError, match=r"2 choices per example expects labels in "
                                                    r"\[0, 2\)"):
        _check(mc, kind="multiple_choice")
    # tagging: -1 is "no tag" (ignored by the loss) wherever it is; 5 >= NUM_LABELS is not
    tags = _batch(labels=np.array([[-1, 1, -1, -1], [-1, 2, -1, -1]]),
                  label_mask=np.array([[0, 1, 1, 0], [0, 1, 0, 0]]))
    _check(tags, kind="tagging")
    with pytest.raises(trainer.BadBatchError, match=r"tagging labels hold 1 value\(s\) \[5\], "
                       r"the first at index \[1, 1\] where label_mask is 1; expected tags in "
                       r"\[0, 3\) \(NUM_LABELS=3\) or -1"):
        _check({**tags, "labels": np.array([[-1, 1, -1, -1], [-1, 5, -1, -1]])}, kind="tagging")
    with pytest.raises(trainer.BadBatchError, match=r"end_positions hold 1 value\(s\) \[4\]"):
        _check(_batch(start_positions=np.array([1, 1]), end_positions=np.array([2, 4])),
               kind="qa")


def test_token_ids_past_the_vocabulary_are_an_error_not_a_nan():
    with pytest.raises(trainer.BadBatchError, match=(
            r"^train batch 5 \(step 6\): input_ids hold 1 value\(s\) \[12\], the first at index "
            r"\[1, 2\], outside the model's vocabulary \[0, 10\) \(MODEL_CONFIG vocab_size=10\)")):
        _check(_batch(input_ids=np.array([[0, 7, 2, 1], [0, 9, 12, 2]])))
    with pytest.raises(trainer.BadBatchError, match=r"length 9, but the model's positions "
                                                    r"allow at most 8"):
        _check(_batch(input_ids=np.zeros((2, 9), np.int32)))


def test_tag_minus_one_under_label_mask_is_ignored_by_the_loss():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 4)), jnp.float32)
    batch = {"labels": jnp.array([[1, -1, 2]]), "label_mask": jnp.array([[1, 1, 1]])}
    out = trainer.token_loss(logits, batch)
    kept = trainer.token_loss(logits, {"labels": jnp.array([[1, 0, 2]]),
                                       "label_mask": jnp.array([[1, 0, 1]])})
    assert float(out.weight) == 2.0
    np.testing.assert_allclose(float(out.loss_sum), float(kept.loss_sum), rtol=1e-6)


# 2. gin macros ---------------------------------------------------------------------------------
def test_misspelt_macro_stops_the_cli_suggesting_the_known_one(tmp_path):
    proc = _run(_cli(tmp_path / "run", "--gin.TRAIN_STEPS=4", "--gin.LEARNING_RAT=1e-3"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert ("GinMacroError: gin binding LEARNING_RAT = 0.001: no gin file defines or uses a "
            "macro LEARNING_RAT, so it would change nothing; did you mean LEARNING_RATE?"
            in proc.stderr)
    assert not (tmp_path / "run").exists()


def test_macro_of_the_wrong_type_names_macro_parameter_and_type():
    with pytest.raises(gin_utils.GinMacroError, match=(
            r"^gin binding TRAIN_STEPS = 'ten': TRAIN_STEPS is train_script.train's "
            r"'total_steps', which expects int, got str 'ten'$")):
        gin_utils.parse_gin(TINY_FINETUNE, ["TRAIN_STEPS = 'ten'"])
    gin.clear_config()
    with pytest.raises(gin_utils.GinMacroError, match=r"LEARNING_RATE is trainer.make_optimizer"
                                                      r"'s 'learning_rate', which expects float"):
        gin_utils.parse_gin(TINY_FINETUNE, ["LEARNING_RATE = 'fast'"])
    gin.clear_config()
    # fine: known macros of the right type, None for an optional one, a reference, a macro a
    # command-line binding itself uses
    gin_utils.parse_gin(TINY_FINETUNE, [
        "TRAIN_STEPS = 10", "LEARNING_RATE = 1", "NUM_LABELS = None", "FOO = 3",
        "train_script.train.seed = %FOO", "TRAIN_BATCHES = @train_script.synthetic_batches"])
    assert gin.query_parameter("TRAIN_STEPS/gin.macro.value") == 10


# 3. config.json --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    config = XLMRConfig.tiny()
    params = XLMRModel(config).init_params(jax.random.key(0))
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    convert.save_hf_checkpoint(config, jax.device_get(params), folder)
    return folder


def _edit_config(hf_dir, tmp_path, **changes):
    folder = tmp_path / "edited"
    shutil.copytree(hf_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder, folder / "config.json"


def test_config_layer_count_that_disagrees_with_the_weights_is_an_error(hf_dir, tmp_path):
    convert.load_hf_checkpoint(hf_dir)  # the untouched copy loads
    folder, path = _edit_config(hf_dir, tmp_path, num_hidden_layers=1)
    with pytest.raises(ValueError, match=(
            rf"^{path}: field 'num_hidden_layers' is 1, but .*model.safetensors holds 2 encoder "
            rf"layers \(encoder.layer.0 .. encoder.layer.1\); expected them to agree")):
        convert.load_hf_checkpoint(folder)


@pytest.mark.parametrize("changes, message", [
    ({"hidden_size": "64"}, r"field 'hidden_size' is '64' \(str\); expected a positive integer"),
    ({"hidden_dropout_prob": "0.1"},
     r"field 'hidden_dropout_prob' is '0.1' \(str\); expected a number in \[0, 1\)"),
    ({"num_attention_heads": 0}, r"field 'num_attention_heads' is 0 \(int\); expected a "
                                 r"positive integer"),
    ({"vocab_size": None}, r"missing field\(s\) \['vocab_size'\]; expected a Hugging Face "
                           r"XLM-R config.json with \['vocab_size'"),
    ({"num_attention_heads": 5}, r"hidden_size 64 is not a multiple of num_attention_heads 5"),
])
def test_config_fields_are_checked_naming_file_and_field(hf_dir, tmp_path, changes, message):
    folder, path = _edit_config(hf_dir, tmp_path, **changes)
    with pytest.raises(ValueError, match=rf"^{path}: {message}"):
        convert.load_hf_checkpoint(folder)


# 4. checkpoints --------------------------------------------------------------------------------
def _state(step: int) -> trainer.TrainState:
    params = {"roberta": {"kernel": jnp.full((4, 4), float(step))}, "classifier": jnp.ones(3)}
    return trainer.TrainState(step=jnp.int32(step), params=params,
                              opt_state={"count": jnp.int32(step)}, rng=jax.random.PRNGKey(0))


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)


@pytest.fixture
def two_steps(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = checkpoints.Checkpointer(directory, checkpoints.CheckpointConfig(keep=3,
                                                                            async_save=False))
    for step in (1, 2):
        ckpt.save(_state(step))
    ckpt.close()
    return directory


def test_corrupt_checkpoint_names_path_step_and_the_intact_one(two_steps):
    for root, _, files in os.walk(two_steps / "2" / "state"):
        for name in files:
            if os.path.basename(root) == "d":  # the array data files
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"not an array" * 4)
    ckpt = checkpoints.Checkpointer(two_steps, read_only=True)
    with pytest.raises(checkpoints.CheckpointReadError, match=(
            rf"^checkpoint {two_steps}/2 \(step 2\): its arrays cannot be read \(.+\)\. Step 1 "
            rf"in {two_steps} is intact: move the bad step out of the checkpoint directory "
            rf"\(mv {two_steps}/2 {two_steps}.bad-step-2\) and rerun the same command to resume "
            rf"from step 1\.$")):
        ckpt.restore(_abstract(_state(2)))
    restored, meta = ckpt.restore(_abstract(_state(1)), 1)
    assert meta["step"] == 1 and float(restored.params["roberta"]["kernel"][0, 0]) == 1.0
    ckpt.manager.close()


def _tree(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names}


def test_a_corrupt_step_is_set_aside_by_copy_where_directories_cannot_be_renamed(
        two_steps, monkeypatch, caplog):
    """gs:// has no directory rename: the bad step is copied whole, then removed (here forced
    on a local directory through the same epath calls)."""
    for root, _, files in os.walk(two_steps / "2" / "state"):
        for name in files:
            if os.path.basename(root) == "d":
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"not an array" * 4)
    before = _tree(two_steps / "2")
    monkeypatch.setattr(checkpoints, "set_aside",
                        functools.partial(checkpoints.set_aside, by_copy=True))
    ckpt = checkpoints.Checkpointer(two_steps)
    with caplog.at_level("WARNING"):
        state, meta = ckpt.restore_latest_intact(_abstract(_state(2)))
    aside = f"{two_steps}.bad-step-2"
    assert meta["step"] == 1 and float(state.params["roberta"]["kernel"][0, 0]) == 1.0
    assert ckpt.all_steps() == [1] and not (two_steps / "2").exists()
    assert _tree(aside) == before  # every file, byte for byte
    assert f"moved it to {aside}" in caplog.text
    ckpt.close()


def test_set_aside_by_copy_removes_the_commit_marker_before_anything_else(tmp_path, monkeypatch):
    step = tmp_path / "ckpt" / "3"
    (step / "state" / "d").mkdir(parents=True)
    (step / "state" / "d" / "x").write_bytes(b"123")
    (step / "commit_success.txt").write_text("ok")
    (tmp_path / "ckpt.bad-step-3").mkdir()  # taken: a time suffix is added
    before = _tree(step)

    def interrupted(self, missing_ok=False):
        raise OSError("interrupted")

    monkeypatch.setattr(type(checkpoints.epath.Path(step)), "rmtree", interrupted)
    with pytest.raises(OSError, match="interrupted"):
        checkpoints.set_aside(checkpoints.epath.Path(step), f"{tmp_path}/ckpt.bad-step-3",
                              by_copy=True)
    (copy,) = [p for p in tmp_path.iterdir() if p.name.startswith("ckpt.bad-step-3-")]
    assert _tree(copy) == before  # whole before anything was removed
    assert not (step / "commit_success.txt").exists()  # no longer a finished step on gs://
    assert (step / "state" / "d" / "x").exists()


def test_checkpoint_without_meta_names_path_and_item(two_steps):
    shutil.rmtree(two_steps / "2" / "meta")
    ckpt = checkpoints.Checkpointer(two_steps, read_only=True)
    with pytest.raises(checkpoints.CheckpointReadError, match=(
            rf"^checkpoint {two_steps}/2 \(step 2\) has no 'meta' item \(expected "
            rf"{two_steps}/2/meta beside 'state'.*Step 1 in {two_steps} is intact")):
        ckpt.restore(_abstract(_state(2)))
    shutil.rmtree(two_steps / "1" / "meta")
    with pytest.raises(checkpoints.CheckpointReadError,
                       match=r"No earlier checkpoint in it is intact"):
        ckpt.metadata(2)
    ckpt.manager.close()


# 5. one writer per run directory ---------------------------------------------------------------
def test_second_writer_stops_naming_the_holder_and_a_killed_holder_is_stale(tmp_path):
    model_dir = tmp_path / "run"
    lock_file = model_dir / checkpoints.LOCK_NAME
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.Popen(_cli(model_dir, "--gin.TRAIN_STEPS=100000"), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not lock_file.exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.1)
        holder = json.loads(lock_file.read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        second = _run(_cli(model_dir, "--gin.TRAIN_STEPS=4"))
        assert second.returncode == 1, second.stderr[-2000:]
        assert (f"RunLockedError: {model_dir} is in use: {lock_file} is held by pid {first.pid} "
                f"on host {socket.gethostname()}") in second.stderr
        assert "wait for it to finish, stop it, or use another MODEL_DIR" in second.stderr
        assert first.poll() is None  # the first run is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        first.stderr.close()
    # kill -9 left the lock behind: its pid is dead on this host, so it is stale, not "locked"
    assert json.loads(lock_file.read_text())["pid"] == first.pid
    with checkpoints.RunLock(model_dir) as lock:
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with pytest.raises(checkpoints.RunLockedError, match="this process already writes"):
            checkpoints.RunLock(model_dir).acquire()
    assert not lock_file.exists() and lock is not None


def test_lock_from_another_host_says_it_cannot_be_checked(tmp_path):
    tmp_path.joinpath(checkpoints.LOCK_NAME).write_text(json.dumps(
        {"pid": 1234, "host": "tpu-worker-7", "started": 0, "command": "python -m xstilts.train"}))
    with pytest.raises(checkpoints.RunLockedError, match=(
            rf"held by pid 1234 on host tpu-worker-7 .*this host \({socket.gethostname()}\) "
            rf"cannot tell whether that process still runs: if it does not, delete "
            rf"{tmp_path}/{checkpoints.LOCK_NAME} and rerun")):
        checkpoints.RunLock(tmp_path).acquire()


def test_only_process_zero_takes_the_lock(tmp_path, monkeypatch):
    """The other processes of a multi-process job share process 0's lock: they never take it
    (here a foreign lock is present, and process 1 goes past it to train()'s own checks)."""
    tmp_path.joinpath(checkpoints.LOCK_NAME).write_text(json.dumps(
        {"pid": 1234, "host": "tpu-worker-0", "started": 0}))
    kwargs = dict(model_dir=str(tmp_path), model_config=XLMRConfig.tiny(),
                  total_steps=gin.REQUIRED, batch_size=8, train_batches=train.synthetic_batches,
                  partitioner=partitioning.Partitioner())
    with pytest.raises(checkpoints.RunLockedError):
        train.train(**kwargs)
    monkeypatch.setattr(train.jax, "process_index", lambda: 1)
    with pytest.raises(ValueError, match=r"required settings \['total_steps'\]"):
        train.train(**kwargs)


# 3. checkpoints you can trust -------------------------------------------------------------------
def _poisoning_optimizer(at_step: int):
    """An optimizer whose update at step ``at_step`` turns every parameter into NaN (and leaves
    them alone otherwise): that step's own loss and gradient norm are still finite, so its
    checkpoint is saved, and only the next step shows the NaN (the issue's 1.7e28 run)."""

    def make(*, total_steps: int):
        def init(params):
            return {"count": jnp.zeros([], jnp.int32)}

        def update(grads, state, params=None):
            count = state["count"] + 1
            poison = jnp.where(count == at_step, jnp.nan, 0.0)
            return jax.tree.map(lambda p: p * poison, params), {"count": count}

        return optax.GradientTransformation(init, update), lambda step: 1e-3

    return make


def test_nan_stop_names_the_checkpoint_a_finite_next_step_validated(tmp_path):
    config = XLMRConfig.tiny()
    batches = functools.partial(train.synthetic_batches, length=16, num_labels=3,
                                vocab_size=config.vocab_size)
    with pytest.raises(train.NonFiniteLossError) as stop:
        train.train(model_dir=str(tmp_path), model_config=config, total_steps=5, batch_size=8,
                    task_type="classification", num_labels=3, train_batches=batches,
                    optimizer=_poisoning_optimizer(3), partitioner=partitioning.Partitioner(),
                    checkpoint=checkpoints.CheckpointConfig(save_every_steps=1, keep=5),
                    log_every_steps=1, progress=False)
    where = tmp_path / "checkpoints"
    message = str(stop.value)
    assert message.startswith("loss nan / grad norm nan at step 4: stopping. No checkpoint was "
                              "saved at or after it. The last checkpoint validated by a finite "
                              f"next step is step 2 in {where}; the later [3] were not: move "
                              f"them aside (mv {where}/3 {where}.unvalidated-step-3) and rerun "
                              f"with the change and --on_change=keep."), message
    assert [s for s in (1, 2, 3) if (where / str(s) / checkpoints.VALIDATED).exists()] == [1, 2]
    reader = checkpoints.Checkpointer(where, read_only=True)
    try:  # step 3 (saved) really holds the NaN parameters that the message steers away from
        tx, schedule = trainer.make_optimizer(total_steps=1)
        model = train.build_model("classification", config, num_labels=3)
        abstract = trainer.Trainer(model, trainer.task_loss("classification"), tx, schedule,
                                   partitioning.Partitioner()).abstract_state((8, 16))
        params = reader.restore_params(abstract.params, 3)
    finally:
        reader.manager.close()
    assert np.isnan(np.asarray(jax.tree.leaves(params)[0])).all()

    # 4. eval batches get the train batches' checks (evaluate_checkpoint: before any compile)
    with pytest.raises(trainer.BadBatchError, match=r"^eval batch 0 \(from synthetic_batches, "
                       r"which records no task or file\): classification labels hold "
                       r"\d+ value\(s\) \[3, 4, 5\], the first at index \d+ on real rows; "
                       r"NUM_LABELS=3 expects labels in \[0, 3\)"):
        train.evaluate_checkpoint(
            model_dir=str(tmp_path), model_config=config, batch_size=8, step=2,
            eval_batches=functools.partial(batches, num_labels=6, num_batches=1),
            num_labels=3, partitioner=partitioning.Partitioner())


def test_metrics_log_is_cut_back_to_the_resumed_step(tmp_path):
    path = tmp_path / "train_metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6))
                    + '{"step": 6, "lo')  # a kill mid-line
    assert train.cut_metrics(path, 3) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: not a JSON line"):
        train.cut_metrics(path, 1)


def test_settings_of_a_closure_optimizer_are_its_schedule(tmp_path):
    # The experiment driver passes ``lambda total_steps: make_optimizer(...)``: nothing to
    # read but its schedule, which is recorded by value.
    def args(lr):
        return {"total_steps": 10, "model_config": XLMRConfig.tiny(),
                "optimizer": lambda total_steps: trainer.make_optimizer(
                    learning_rate=lr, total_steps=total_steps),
                "train_batches": functools.partial(train.synthetic_batches, length=16)}

    def settings(lr):
        _, schedule = args(lr)["optimizer"](total_steps=10)
        return run_settings.train_settings(args(lr), schedule=schedule, data_records=None)

    old, new = settings(1e-5), settings(2e-5)
    # 10% linear warm-up (1 step) then linear decay to 0 at step 10: steps 0, 1, 5 and 9
    expected = [0.0, 1e-5, 1e-5 * 5 / 9, 1e-5 * 1 / 9]
    assert old["optimizer.schedule"] == [float(f"{v:.7g}") for v in expected]
    assert fingerprint.settings_diff(old, new) == [
        ("optimizer.schedule", old["optimizer.schedule"], new["optimizer.schedule"])]
    run_settings.record(tmp_path, old)
    assert run_settings.check(tmp_path, old, resume_step=4, on_change="stop") == []
    with pytest.raises(run_settings.SettingsChangedError, match=r"optimizer\.schedule: "):
        run_settings.check(tmp_path, new, resume_step=4, on_change="stop")
    assert run_settings.check(tmp_path, new, resume_step=None, on_change="stop") == []
    (tmp_path / run_settings.SETTINGS_FILE).write_text("{")
    with pytest.raises(run_settings.SettingsChangedError, match="run_settings.json: not valid"):
        run_settings.check(tmp_path, new, resume_step=4, on_change="stop")
