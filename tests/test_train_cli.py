"""``python -m xstilts.train``: t5x flags, gin files, errors, SIGTERM, summaries, eval.gin."""

from __future__ import annotations

import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
from train_setup import enable_compilation_cache

from xstilts import checkpoints, gin_utils, train

enable_compilation_cache()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FINETUNE = ["models/xlmr_tiny.gin", "runs/finetune.gin"]
SYNTHETIC = [
    "TASK_TYPE = 'classification'", "NUM_LABELS = 3", "BATCH_SIZE = 8",
    "TRAIN_BATCHES = @train_script.synthetic_batches",
    "train_script.synthetic_batches.num_labels = 3",
    "train_script.synthetic_batches.length = 16",
]


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_gin_shorthand_flags_become_bindings():
    args = train.parse_flags(["--gin_file=a.gin", "--gin_file=b.gin", "--gin.MODEL_DIR='/x'",
                              "--gin.TRAIN_STEPS=5", "--gin_bindings=SEED = 3"])
    assert args.gin_file == ["a.gin", "b.gin"]
    assert args.gin_bindings == ["MODEL_DIR = '/x'", "TRAIN_STEPS = 5", "SEED = 3"]


def test_unknown_gin_binding_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'train_script.train' doesn't have a parameter named "
                                         r"'learning_rat'"):
        gin_utils.parse_gin(TINY_FINETUNE, ["train_script.train.learning_rat = 1e-3"])
    gin.clear_config()
    with pytest.raises(FileNotFoundError, match=r"--gin_file runs/nope.gin: no such file"):
        gin_utils.parse_gin(["runs/nope.gin"], [])


def test_required_macros_must_be_given(tmp_path):
    gin_utils.parse_gin(TINY_FINETUNE, SYNTHETIC)
    with pytest.raises(ValueError, match=r"required settings \['model_dir', 'total_steps', "
                       r"'init_encoder_from'\] were not given: set the gin macros MODEL_DIR, "
                       r"TRAIN_STEPS, INIT_ENCODER_FROM"):
        gin_utils.configured(train.entry_point)()


def test_mesh_that_does_not_divide_the_devices_is_a_clear_error(tmp_path):
    gin_utils.parse_gin(TINY_FINETUNE, [
        *SYNTHETIC, f"MODEL_DIR = '{tmp_path}'", "TRAIN_STEPS = 2", "INIT_ENCODER_FROM = None",
        "MESH_DATA = 3", "MESH_FSDP = 1", "MESH_TENSOR = 1"])
    with pytest.raises(ValueError, match=r"needs 3 devices but 8 are available"):
        gin_utils.configured(train.entry_point)()
    assert not os.listdir(tmp_path)  # nothing half-written


def _tensorboard_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Read tensorboardX event files (TFRecord framing + Event protos) back."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.mark.slow
def test_cli_run_sigterm_checkpoints_and_exits_cleanly_then_eval_gin(tmp_path):
    model_dir = tmp_path / "run"
    bindings = [*SYNTHETIC, f"MODEL_DIR = '{model_dir}'", "TRAIN_STEPS = 1000",
                "INIT_ENCODER_FROM = None", "DROPOUT_RATE = 0.0",
                "train_script.train.log_every_steps = 2",
                # evaluation every 2 steps on 2 batches; its accuracy picks the best checkpoint
                "train_script.train.eval_every_steps = 2",
                "train_script.train.eval_batches = @eval/train_script.synthetic_batches",
                "eval/train_script.synthetic_batches.num_batches = 2",
                "eval/train_script.synthetic_batches.seed = 7"]
    cmd = [sys.executable, "-m", "xstilts.train",
           *[f"--gin_file={f}" for f in TINY_FINETUNE],
           "--gin.LEARNING_RATE=1e-4", *[f"--gin_bindings={b}" for b in bindings]]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics_file = model_dir / "train_metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(proc.stdout.read().decode()[-3000:])
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    text = output.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "SIGTERM" in text and "(preempted)" in text
    assert "train:" in text and "step" in text  # the tqdm bar (rate, ETA) on the chief
    steps = [json.loads(line)["step"] for line in metrics_file.read_text().splitlines()]
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and 3 <= last < 1000
    ckpt = checkpoints.Checkpointer(model_dir / "checkpoints", read_only=True, config=
                                    checkpoints.CheckpointConfig(best_metric="eval/accuracy"))
    assert ckpt.latest_step() == last
    assert ckpt.metadata()["data_position"] == {"batches_consumed": last}
    scalars = _tensorboard_scalars(str(model_dir / "tensorboard"))
    eval_acc = dict(scalars["eval/accuracy"])
    assert sorted(eval_acc) == list(range(2, last + 1, 2))
    # finetune.gin keeps the last 2 plus the best by eval/accuracy
    best = max(eval_acc.values())
    saved = ckpt.all_steps()
    assert last in saved and len(saved) <= 3
    assert any(eval_acc.get(step) == best for step in saved)
    assert eval_acc[ckpt.best_step()] == best
    operative = (model_dir / "operative_config.gin").read_text()
    for line in ("TRAIN_STEPS = 1000", "LEARNING_RATE = 0.0001",
                 "train_script.train.total_steps = %TRAIN_STEPS",
                 "trainer.make_optimizer.learning_rate = %LEARNING_RATE",
                 "MODEL_CONFIG/xlmr.XLMRConfig.preset.name = 'tiny'",
                 "trainer.make_optimizer.eps = 1e-08"):
        assert line in operative.splitlines(), line
    logged = dict(scalars["train/loss"])
    jsonl = {s["step"]: s["loss"] for s in map(json.loads, metrics_file.read_text().splitlines())}
    assert logged and all(np.isclose(v, jsonl[k]) for k, v in logged.items())
    assert "perf/tokens_per_s" in scalars and "train/learning_rate" in scalars

    # eval.gin on the same run directory (in-process): loss of the saved parameters.
    gin.clear_config()
    gin_utils.parse_gin(["models/xlmr_tiny.gin", "runs/eval.gin"], [
        f"MODEL_DIR = '{model_dir}'", "TASK_TYPE = 'classification'", "NUM_LABELS = 3",
        "BATCH_SIZE = 8", "EVAL_BATCHES = @train_script.synthetic_batches",
        "train_script.synthetic_batches.num_labels = 3",
        "train_script.synthetic_batches.length = 16",
        "train_script.synthetic_batches.num_batches = 2", "DROPOUT_RATE = 0.0"])
    result = gin_utils.configured(train.entry_point)()
    saved = json.loads((model_dir / "eval_results.json").read_text())
    assert saved["step"] == last and saved["weight"] == 15.0  # 16 rows, one padding example
    assert np.isfinite(result["loss"]) and 0.0 <= result["accuracy"] <= 1.0
