"""The train loop's host side: metrics read only at logging steps, throughput over real tokens
and train-step time, and run directories that stay URLs (``gs://``) down to Orbax."""

from __future__ import annotations

import functools
import json
import os
import re
import types

import jax
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from train_setup import enable_compilation_cache

from xstilts import checkpoints, gcs_objects, train, trainer
from xstilts.models.xlmr import XLMRConfig

enable_compilation_cache()
BATCH, LENGTH, NUM_LABELS = 8, 16, 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensorboard_scalars(log_dir) -> dict[str, dict[int, float]]:
    from test_train_cli import _tensorboard_scalars as read

    return {tag: dict(values) for tag, values in read(str(log_dir)).items()}


class _Recorder:
    """A batch factory over ``synthetic_batches`` that remembers which batches were drawn."""

    def __init__(self) -> None:
        self.drawn: list[int] = []

    def __call__(self, *, start_batch: int, **kwargs):
        batches = train.synthetic_batches(start_batch=start_batch, task_type="classification",
                                          length=LENGTH, num_labels=NUM_LABELS, seed=3, **kwargs)
        for index, batch in enumerate(batches, start_batch):
            self.drawn.append(index)
            yield batch


def _real_tokens(index: int) -> int:
    batch = next(train.synthetic_batches(shard_index=0, num_shards=1, batch_size=BATCH,
                                         start_batch=index, length=LENGTH,
                                         num_labels=NUM_LABELS, seed=3))
    return int(batch["attention_mask"].sum())


def _train(model_dir, *, total_steps: int, log_every_steps: int, batches=None, **kwargs):
    return train.train(
        model_dir=str(model_dir), model_config=XLMRConfig.tiny(), total_steps=total_steps,
        batch_size=BATCH, task_type="classification", num_labels=NUM_LABELS,
        train_batches=batches or _Recorder(),
        optimizer=functools.partial(trainer.make_optimizer, learning_rate=1e-3),
        checkpoint=checkpoints.CheckpointConfig(save_every_steps=1000, async_save=False),
        log_every_steps=log_every_steps, progress=False, **kwargs)


class _FakeClock:
    """``train.time`` with a ``perf_counter`` that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


# Cadence and content ----------------------------------------------------------------------------
def test_metrics_are_read_only_at_logging_steps_and_every_step_is_recorded(tmp_path,
                                                                          monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    recorder = _Recorder()

    def timed_batches(**kwargs):
        for batch in recorder(**kwargs):
            clock.now += 1.0  # one second of "train step" per batch
            yield batch

    hooked: list[tuple[int, int]] = []  # (step, batches drawn when its metrics were read)

    def hook(step, metrics):
        assert set(metrics) >= {"loss", "grad_norm", "tokens"}
        hooked.append((step, len(recorder.drawn)))

    evaluations = []

    def evaluator(params):
        clock.now += 100.0  # an evaluation: never in the throughput window
        evaluations.append(clock.now)
        return {"score": 0.5}

    result = _train(tmp_path, total_steps=7, log_every_steps=3, batches=timed_batches,
                    step_hook=hook, evaluator=evaluator, eval_every_steps=6,
                    peak_tflops_per_device=1e-3)
    # train() draws batch 0 once to probe shapes, then steps 1..7 from batch 0 again. Metrics
    # of steps 1-3 are read after the 3rd step's dispatch, 4-6 after the 6th (also the eval
    # step), 7 at the end: never one step at a time.
    assert hooked == [(1, 4), (2, 4), (3, 4), (4, 7), (5, 7), (6, 7), (7, 8)]
    assert len(evaluations) == 2  # step 6 and the last step
    lines = [json.loads(line) for line in (tmp_path / "train_metrics.jsonl").read_text()
             .splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 8)) == [r["step"] for r in
                                                                result.history]
    assert [r["loss"] for r in lines] == [r["loss"] for r in result.history]
    assert all(set(r) == {"step", "loss", "accuracy", "grad_norm", "learning_rate", "weight",
                          "tokens"} for r in lines)
    assert [r["tokens"] for r in lines] == [_real_tokens(i) for i in range(7)]

    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert sorted(scalars["train/loss"]) == [3, 6, 7]  # one TensorBoard point per window
    for step, value in scalars["train/loss"].items():
        assert np.isclose(value, lines[step - 1]["loss"], rtol=1e-6)
    # Windows: steps 1-3 (step 1 compiles: untimed), 4-6, 7. The fake clock moves 1 s per
    # batch drawn and 100 s per evaluation; evaluations are outside the windows. Window 1 is
    # charged the batch of step 1 too (drawn before its shape is known to be new): 3 s.
    computed = BATCH * LENGTH
    windows = {3: ([1, 2], 3.0), 6: ([3, 4, 5], 3.0), 7: ([6], 1.0)}
    flops = BATCH * trainer.train_flops_per_example(XLMRConfig.tiny(), LENGTH)
    for step, (indices, seconds) in windows.items():
        real = sum(_real_tokens(i) for i in indices)
        assert np.isclose(scalars["perf/tokens_per_s"][step], real / seconds, rtol=1e-6)
        assert np.isclose(scalars["perf/padding_efficiency"][step],
                          real / (computed * len(indices)), rtol=1e-6)
        assert np.isclose(scalars["perf/step_time_s"][step], seconds / len(indices), rtol=1e-6)
        mfu_computed = flops * len(indices) / seconds / jax.device_count() / 1e12 / 1e-3
        assert np.isclose(scalars["perf/mfu_computed"][step], mfu_computed, rtol=1e-5)
        assert np.isclose(scalars["perf/mfu"][step],
                          mfu_computed * real / (computed * len(indices)), rtol=1e-5)


def test_a_nan_is_caught_at_the_next_logging_step_before_any_save(tmp_path):
    with pytest.raises(train.NonFiniteLossError, match=r"at step (\d+).*No checkpoint in \S+ was "
                       r"followed by a finite step \(saved: none\)") as info:
        train.train(
            model_dir=str(tmp_path), model_config=XLMRConfig.tiny(), total_steps=8,
            batch_size=BATCH, task_type="classification", num_labels=NUM_LABELS,
            train_batches=_Recorder(),
            optimizer=functools.partial(trainer.make_optimizer, learning_rate=1e38),
            checkpoint=checkpoints.CheckpointConfig(save_every_steps=4, async_save=False),
            log_every_steps=4, progress=False)
    bad = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    lines = (tmp_path / "train_metrics.jsonl").read_text().splitlines()
    assert len(lines) == bad - 1 and bad <= 4  # every good step before it is recorded
    assert not checkpoints.Checkpointer(tmp_path / "checkpoints").all_steps()


# Throughput arithmetic --------------------------------------------------------------------------
def test_throughput_window_counts_real_tokens_over_step_time():
    mask = np.array([[1] * 8, [1] * 4 + [0] * 4, [1] * 2 + [0] * 6, [0] * 8])  # 14 of 32 real
    window = train.ThroughputWindow()
    window.add(real_tokens=float(mask.sum()), computed_tokens=float(mask.size), flops=64e12)
    window.add(real_tokens=float(mask.sum()), computed_tokens=float(mask.size), flops=64e12)
    window.seconds = 4.0
    perf = window.summary(num_devices=2, peak_tflops=20.0)
    assert perf == pytest.approx({
        "perf/tokens_per_s": 28 / 4.0,
        "perf/computed_tokens_per_s": 64 / 4.0,
        "perf/padding_efficiency": 14 / 32,
        "perf/step_time_s": 2.0,
        "perf/computed_tflops_per_s_per_device": 128 / 4.0 / 2,  # 16 TFLOP/s per device
        "perf/tflops_per_s_per_device": 16.0 * 14 / 32,
        "perf/mfu_computed": 0.8,
        "perf/mfu": 0.8 * 14 / 32,  # 0.35
    }, rel=1e-12)
    assert "perf/mfu" not in window.summary(num_devices=2, peak_tflops=None)
    assert train.ThroughputWindow().summary(num_devices=1, peak_tflops=1.0) == {}


@pytest.mark.parametrize("kind,peak", [("NVIDIA H100 80GB HBM3", 989.0),
                                       ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
                                       ("NVIDIA A100-SXM4-40GB", 312.0), ("TPU v3", 61.5),
                                       ("TPU v4", 275.0), ("TPU v5 lite", 197.0),
                                       ("TPU v5", 459.0), ("TPU v6 lite", 918.0),
                                       ("cpu", None)])
def test_peak_is_per_device(kind, peak):
    assert train.device_peak_tflops(types.SimpleNamespace(device_kind=kind)) == peak


def test_mlm_flops_count_the_masked_positions_the_head_computes():
    config = XLMRConfig.tiny()
    full = trainer.train_flops_per_example(config, 128, mlm=True)
    masked = trainer.train_flops_per_example(config, 128, mlm=True,
                                             mlm_predictions=trainer.mlm_max_predictions(128))
    assert trainer.mlm_max_predictions(128) == 40
    assert full - masked == 6.0 * config.hidden_size * config.vocab_size * (128 - 40)


# Remote run directories -------------------------------------------------------------------------
def test_urls_stay_urls():
    assert checkpoints.is_url("gs://bucket/run") and checkpoints.is_url("s3://b/x")
    assert not checkpoints.is_url("/tmp/run") and not checkpoints.is_url("run/gs://x")
    assert str(checkpoints.run_path("gs://bucket/run")) == "gs://bucket/run"
    assert str(checkpoints.run_path("gs://bucket/run") / "checkpoints") == \
        "gs://bucket/run/checkpoints"
    assert str(checkpoints.run_path("rel/run")) == os.path.abspath("rel/run")


class _LocalBucket(epath_backend.Backend):
    """An epath backend for ``gs://`` that stores objects under a local directory (no network):
    every ``gs://bucket/key`` argument becomes ``<root>/bucket/key``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.urls: set[str] = set()  # every gs:// URL that epath was asked about

    def local(self, path) -> str:
        text = os.fspath(path)
        if text.startswith("gs://"):
            self.urls.add(text)
            return os.path.join(self.root, text[len("gs://"):])
        return text

    def url(self, path: str) -> str:
        return "gs://" + os.path.relpath(path, self.root) if path.startswith(self.root) else path

    def __getattribute__(self, name):
        if name in {"open", "exists", "isdir", "listdir", "makedirs", "mkdir", "rmtree", "walk",
                    "remove", "rename", "replace", "copy", "stat"}:
            method = getattr(epath_backend.os_backend, name)
            local = object.__getattribute__(self, "local")
            return lambda *args, **kw: method(*[local(a) if isinstance(a, (str, os.PathLike))
                                                else a for a in args], **kw)
        if name == "glob":
            local, url = (object.__getattribute__(self, n) for n in ("local", "url"))
            return lambda path: [url(p) for p in epath_backend.os_backend.glob(local(path))]
        return object.__getattribute__(self, name)

    # abstract methods (dispatched by __getattribute__ above)
    open = exists = isdir = listdir = glob = walk = makedirs = mkdir = None  # type: ignore
    rmtree = remove = rename = replace = copy = stat = None  # type: ignore


@pytest.fixture
def local_bucket(tmp_path, monkeypatch):
    """``gs://`` through epath goes to ``tmp_path/gcs``; Orbax's CheckpointManager records the
    directory it is given (the URL) and writes its arrays (TensorStore would open a GCS
    kvstore) under the same local root."""
    from etils.epath import gpath

    bucket = _LocalBucket(str(tmp_path / "gcs"))
    original = gpath._GPath._backend  # noqa: SLF001

    def backend(self):
        return bucket if self._uri_scheme == "gs" else original.fget(self)  # noqa: SLF001

    monkeypatch.setattr(gpath._GPath, "_backend", property(backend))  # noqa: SLF001
    managers: list[str] = []
    real_manager = checkpoints.ocp.CheckpointManager

    def manager(directory, *args, **kwargs):
        managers.append(str(directory))
        return real_manager(epath.Path(bucket.local(str(directory))), *args, **kwargs)

    monkeypatch.setattr(checkpoints.ocp, "CheckpointManager", manager)
    # The bucket is epath's: the writer.lock takes epath's route too, not google-cloud-storage's
    # client (which would look for credentials; tests/test_gcs_lock.py covers that route).
    monkeypatch.setattr(gcs_objects, "available", lambda: False)
    # Likewise tensorboardX: its own gs:// writer (google-cloud-storage) gives way to epath's.
    from tensorboardX import record_writer

    monkeypatch.setattr(record_writer, "GCS_ENABLED", False)
    monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, "gs",
                        record_writer.REGISTERED_FACTORIES.get("gs"))
    bucket.managers = managers
    return bucket


def test_checkpointer_hands_orbax_the_url(local_bucket):
    ckpt = checkpoints.Checkpointer("gs://bucket/run/checkpoints")
    assert ckpt.directory == "gs://bucket/run/checkpoints"
    assert local_bucket.managers == ["gs://bucket/run/checkpoints"]
    ckpt.close()
    with pytest.raises(FileNotFoundError, match=r"gs://bucket/other does not exist"):
        checkpoints.Checkpointer("gs://bucket/other", read_only=True)


def test_train_on_a_gs_run_directory_writes_there_and_resumes(local_bucket, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = _train("gs://bucket/run", total_steps=4, log_every_steps=2, stop_at_step=2)
    assert first.step == 2
    resumed = _train("gs://bucket/run", total_steps=4, log_every_steps=2)
    assert [r["step"] for r in resumed.history] == [3, 4]
    run = tmp_path / "gcs" / "bucket" / "run"
    assert not (tmp_path / "gs:").exists()  # no os.path.abspath('gs://...') anywhere
    assert set(local_bucket.managers) == {"gs://bucket/run/checkpoints"}
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
    steps = [json.loads(line)["step"] for line in
             (run / "train_metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (run / "config.gin").exists()
    scalars = _tensorboard_scalars(run / "tensorboard")
    assert sorted(scalars["train/loss"]) == [2, 4]
    assert {"gs://bucket/run/train_metrics.jsonl", "gs://bucket/run/config.gin"} <= \
        local_bucket.urls
