"""Issue 18's fault suite: real ``python -m xstilts.train`` processes on the tiny model.

SIGINT in the loop and SIGTERM during set-up, a save that fails on a full (or read-only)
checkpoint directory, a corrupt latest checkpoint, and a resume with changed settings. The
``kill -9`` resumes are in tests/test_train_cli.py and tests/test_runs_never_lie.py (two
writers); the bad configurations (misspelt or mistyped macros, config.json) in
tests/test_runs_never_lie.py. The processes share the test session's JAX compilation cache
(``JAX_COMPILATION_CACHE_DIR``, tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(model_dir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xstilts.train", "--gin_file=models/xlmr_tiny.gin",
            "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.INIT_ENCODER_FROM=None", "--gin.TASK_TYPE='classification'",
            "--gin.NUM_LABELS=3", "--gin.BATCH_SIZE=8",
            "--gin.TRAIN_BATCHES=@train_script.synthetic_batches",
            "--gin_bindings=train_script.synthetic_batches.length = 16",
            "--gin_bindings=train_script.train.log_every_steps = 1",
            "--gin_bindings=train_script.train.progress = False",
            "--gin_bindings=checkpoints.CheckpointConfig.save_every_steps = 2", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=_env())


def _steps(model_dir) -> list[int]:
    path = model_dir / "train_metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _errors(stderr: str) -> list[str]:
    """The ``xstilts.train`` log lines of the reported error (timestamp stripped)."""
    return [line.split(" xstilts.train: ", 1)[1] for line in stderr.splitlines()
            if " xstilts.train: " in line and "Error: " in line]


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}: "
                                 f"{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sigint_in_the_loop_checkpoints_and_exits_like_sigterm(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(run, "--gin.TRAIN_STEPS=100000",
                                 "--gin_bindings=checkpoints.CheckpointConfig.save_every_steps"
                                 " = 100000"),
                            cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
    metrics = run / "train_metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc,
              "two logged steps")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGINT: saving a checkpoint and stopping" in stderr
    assert "KeyboardInterrupt" not in stderr
    steps = _steps(run)
    last = steps[-1]
    assert steps == list(range(1, last + 1))
    assert f"stopped at step {last} after SIGTERM/SIGINT (checkpoint of step {last} saved" \
        in stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [
        str(last)]


def test_sigterm_during_set_up_exits_cleanly_with_a_message(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(run, "--gin.TRAIN_STEPS=4"), cwd=REPO, env=_env(),
                            stderr=subprocess.PIPE, text=True)
    # writer.lock is taken as train() starts, before its data, model and first compile: the
    # process is frozen there so that the signal lands in the set-up, whatever the machine.
    _wait_for(lambda: (run / "writer.lock").exists(), proc, "the run's lock")
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]  # not 143 with nothing said
    assert "SIGTERM before the first step (during set-up): stopping; nothing was trained or " \
           "saved by this run" in stderr
    assert not (run / "checkpoints").exists() or not any(
        p.name.isdigit() for p in (run / "checkpoints").iterdir())
    assert not (run / "writer.lock").exists()


def _small_filesystem() -> list[str] | None:
    """``unshare -m`` + a 2 MiB tmpfs, when this process may mount (root in a container that
    allows it): the checkpoint directory then really runs out of space."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return None if probe.returncode else ["unshare", "-m", "sh", "-c"]


def test_a_failed_save_is_raised_naming_step_path_and_cause_and_leaves_no_partial(tmp_path):
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    checkpoints.mkdir(parents=True)
    cmd = _cli(run, "--gin.TRAIN_STEPS=6")
    wrapper = _small_filesystem()
    if wrapper is not None:
        # One tiny-model checkpoint is ~1.5 MB: step 2 fits in 2.6 MB, step 4 does not.
        # The tmpfs vanishes with the process's mount namespace: list it from inside.
        script = (f'mount -t tmpfs -o size=2600k tmpfs {checkpoints} && {{ "$@"; rc=$?; '
                  f'echo "LISTING: $(ls -A {checkpoints} | tr "\\n" " ")" >&2; exit $rc; }}')
        proc = _run([*wrapper, script, "sh", *cmd])
    elif os.geteuid() != 0:
        checkpoints.chmod(0o555)
        proc = _run(cmd)
        checkpoints.chmod(0o755)
    else:
        pytest.skip("root without mount namespaces: neither a full nor a read-only directory "
                    "can be made here")
    assert proc.returncode == 1, proc.stderr[-3000:]
    (error,) = _errors(proc.stderr)
    if wrapper is not None:  # the step-4 save ran out of space in the background
        kept = ["2"]
        if "checkpoint of step 2 to" in error:  # TensorStore's transient files filled it
            kept = []  # already at step 2 (seen rarely, on a loaded machine)
        step = 4 if kept else 2
        assert error.startswith(
            f"CheckpointSaveError: saving the checkpoint of step {step} to {checkpoints}/{step} "
            f"failed: No space left on device (errno 28, ENOSPC); removed the partial "
            f"{step}.orbax-checkpoint-tmp. Finished checkpoints in {checkpoints}: "
            f"{[2] if kept else 'none'}; free space there"), error
        assert "RESOURCE_EXHAUSTED" not in proc.stderr.replace(error, ""), proc.stderr[-3000:]
        (listing,) = [line for line in proc.stderr.splitlines() if line.startswith("LISTING:")]
        assert listing.split()[1:] == kept, listing  # no partial directory left
    else:  # a read-only directory: Orbax may fail creating the step's directory already
        assert error.startswith(f"CheckpointSaveError: saving the checkpoint of step 2 to "
                                f"{checkpoints}/2 failed: Permission denied (errno 13"), error
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]  # one message, not hundreds
    assert _steps(run)[-1] <= 6
    if wrapper is None:
        assert not any(".orbax-checkpoint-tmp" in p.name for p in checkpoints.iterdir())


def _corrupt(step_dir) -> None:
    """Overwrite every array data file of a finished checkpoint with zeros."""
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    assert data, sorted(str(p) for p in (step_dir / "state").rglob("*"))
    for path in data:
        path.write_bytes(b"\0" * path.stat().st_size)


def test_changed_settings_stop_keep_accepts_and_a_corrupt_latest_falls_back(tmp_path):
    run = tmp_path / "run"
    first = _run(_cli(run, "--gin.TRAIN_STEPS=4"))
    assert first.returncode == 0, first.stderr[-3000:]
    settings = json.loads((run / "run_settings.json").read_text())
    assert settings["settings"]["optimizer.learning_rate"] == 1e-5
    assert settings["settings"]["total_steps"] == 4 and settings["changes"] == []

    # Another learning rate and batch size: stops before any step, setting by setting.
    changed = _run(_cli(run, "--gin.TRAIN_STEPS=6", "--gin.LEARNING_RATE=1e-3",
                        "--gin.BATCH_SIZE=16",
                        "--gin_bindings=checkpoints.CheckpointConfig.save_every_steps = 3"))
    assert changed.returncode == 1, changed.stderr[-3000:]
    (error,) = _errors(changed.stderr)
    assert error == (f"SettingsChangedError: {run}: the settings differ from those the run was "
                     f"started with ({run}/run_settings.json), and its checkpoint of step 4 was "
                     f"trained with the old ones; resuming would mix them:")
    lines = changed.stderr[changed.stderr.index(error):].splitlines()[1:5]
    # save_every_steps changed too, and is not listed: it cannot change the results
    assert lines == ["  batch_size: 8 -> 16", "  optimizer.learning_rate: 1e-05 -> 0.001",
                     "  total_steps: 4 -> 6",
                     "Rerun with the old settings, use another MODEL_DIR, or accept the change "
                     "with --on_change=keep (gin: ON_CHANGE = 'keep')."]
    assert _steps(run) == [1, 2, 3, 4]

    # Step 4's arrays are corrupt: resumed from step 2 with a warning; accepted change.
    _corrupt(run / "checkpoints" / "4")
    kept = _run(_cli(run, "--gin.TRAIN_STEPS=6", "--on_change=keep"))
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert f"checkpoint {run}/checkpoints/4 (step 4) cannot be read: its arrays cannot be read" \
        in kept.stderr
    assert f"moved it to {run}/checkpoints.bad-step-4 and resuming from the previous step" \
        in kept.stderr
    assert "resuming with changed settings (on_change='keep'; latest checkpoint: step 4):\n" \
           "  total_steps: 4 -> 6\n" in kept.stderr
    assert _steps(run) == [1, 2, 3, 4, 5, 6]  # cut back to step 2, then steps 3-6 once each
    record = json.loads((run / "run_settings.json").read_text())
    assert record["settings"]["total_steps"] == 6
    assert record["changes"] == [{"at_step": 2, "diff": [["total_steps", 4, 6]]}]
    assert (run / "checkpoints.bad-step-4").is_dir()
