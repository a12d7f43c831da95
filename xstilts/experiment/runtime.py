"""What every phase runs with: the grid, its inputs and predictor, and one train.train call."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

from xstilts import checkpoints as ckpt_lib
from xstilts import partitioning
from xstilts import train as train_lib
from xstilts import trainer as trainer_lib
from xstilts.data import manifest
from xstilts.experiment.grid import Grid
from xstilts.experiment.inputs import Inputs
from xstilts.experiment.plan import PhaseJob
from xstilts.experiment.predict import Predictor
from xstilts.experiment.rundir import atomic_text, local_cache_dir, run_dir_path
from xstilts.models.xlmr import XLMRConfig
from xstilts.multihost import is_chief

MANIFEST = "data_manifest.json"


def _records(path: epath.Path) -> list[dict[str, Any]]:
    document = json.loads(path.read_text())
    if document.get("version") != manifest.MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {document.get('version')!r}, expected "
                         f"{manifest.MANIFEST_VERSION}")
    return document["records"]


class Preempted(RuntimeError):
    """A phase was stopped by SIGTERM after saving its checkpoint."""


@dataclasses.dataclass
class Runtime:
    """The shared state of one experiment process."""

    grid: Grid
    partitioner: partitioning.Partitioner
    inputs: Inputs
    predictor: Predictor
    progress: bool = False

    @classmethod
    def create(cls, grid: Grid, partitioner: partitioning.Partitioner | None = None,
               progress: bool = False) -> Runtime:
        partitioner = partitioner or partitioning.Partitioner()
        return cls(grid, partitioner, Inputs(grid),
                   Predictor(grid.model_config, partitioner, grid.use_pooler), progress)

    @property
    def run_dir(self) -> epath.Path:
        """The run directory; a ``gs://`` URL stays a URL down to Orbax."""
        return run_dir_path(self.grid.run_dir)

    @property
    def model_config(self) -> XLMRConfig:
        return self.predictor.model_config

    def fit_vocab(self) -> None:
        """A model trained from scratch takes the tokenizer's vocabulary size."""
        if self.grid.pretrained is None and self.grid.pretrain is not None:
            size = self.inputs.tokenizer.vocab_size
            if self.model_config.vocab_size != size:
                self.predictor = Predictor(self.model_config.replace(vocab_size=size),
                                           self.partitioner, self.grid.use_pooler)

    def record_data(self, job_dir: str, *, mixture: str | None = None,
                    splits: Sequence[tuple[str, str]] = (),
                    max_length: int | Mapping[str, int] | None = None) -> None:
        """Provenance of what a job read (``data.manifest``): per task and split the files
        (bytes, sha256), examples, drops by reason and the mixing share, written as
        ``data_manifest.json`` in the job's directory and merged into the run directory's
        (chief only; the counts come from the features already cached)."""
        if not is_chief():
            return
        common = {"data_dir": self.grid.data_dir, "tokenizer": self.inputs.tokenizer,
                  "max_length": max_length, "cache_dir": local_cache_dir(self.run_dir)}
        records = manifest.records_for_mixture(mixture, **common) if mixture else []
        records += manifest.records_for_tasks(splits, **common)
        atomic_text(self.run_dir / job_dir / MANIFEST, manifest.manifest_json(records) + "\n")
        whole = self.run_dir / MANIFEST  # merged with the other jobs' records
        old = _records(whole) if whole.exists() else []
        atomic_text(whole, manifest.manifest_json(records, old) + "\n")

    def merge_manifests(self, job_dirs: Sequence[str]) -> None:
        """The run directory's ``data_manifest.json`` again from every job's (chief): launches
        that share the run directory merge into it concurrently, so one could miss another's
        records until this runs (when every cell is finished)."""
        if not is_chief():
            return
        records = [r for d in job_dirs if (self.run_dir / d / MANIFEST).exists()
                   for r in _records(self.run_dir / d / MANIFEST)]
        atomic_text(self.run_dir / MANIFEST, manifest.manifest_json(records) + "\n")

    def path(self, relative: str | None) -> str | None:
        return None if relative is None else str(self.run_dir / relative)

    def train(self, job: PhaseJob, *, train_batches: Any, total_steps: int,
              num_labels: int = 2, evaluator: Callable[[Any], Mapping[str, float]] | None = None,
              best_metric: str | None = None,
              heads: Mapping[str, tuple[str, int]] | None = None) -> train_lib.TrainResult:
        """``train.train`` of one job with its phase settings (SIGTERM: ``Preempted``)."""
        s = job.settings
        init_from = self.path(job.init_from)
        result = train_lib.train(
            model_dir=str(self.run_dir / job.model_dir), model_config=self.model_config,
            total_steps=total_steps, batch_size=s.batch_size, train_batches=train_batches,
            task_type=job.kind if heads is None else "multitask", num_labels=num_labels,
            use_pooler=self.grid.use_pooler, partitioner=self.partitioner,
            optimizer=lambda total_steps: trainer_lib.make_optimizer(
                learning_rate=s.learning_rate, total_steps=total_steps,
                warmup_fraction=s.warmup_fraction, weight_decay=s.weight_decay),
            checkpoint=ckpt_lib.CheckpointConfig(
                save_every_steps=s.save_every_steps, keep=1, best_metric=best_metric,
                async_save=False),
            init_encoder_from=init_from,
            init_pretrained_from=None if init_from else self.grid.pretrained,
            evaluator=evaluator, eval_every_steps=s.eval_every_steps if evaluator else 0,
            patience=s.patience if evaluator else None,
            seed=job.seed, log_every_steps=max(1, min(50, total_steps)), progress=self.progress,
            **({} if heads is None else {"heads": heads, "task_heads": dict(job.task_heads)}))
        if result.preempted:  # SIGTERM: the checkpoint is saved; the next run resumes here
            raise Preempted(f"stopped at step {result.step} of {job.model_dir} (SIGTERM); run "
                            f"again to resume")
        return result
