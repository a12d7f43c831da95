"""The X-STILTs grid driver, one module per phase of the method.

``grid`` (settings) -> ``plan`` (the phase jobs) -> ``pretrain`` / ``intermediate`` /
``finetune`` (+ ``scoring``) / ``retrieval`` -> ``driver`` (the run) or ``dry_run`` (the same
jobs, lowered); ``rundir`` describes the run directory, ``cli`` the command line.
"""

from xstilts.experiment.cells import Ledger, SettingsChanged
from xstilts.experiment.cli import main, run_experiment
from xstilts.experiment.driver import Experiment, primary_metrics
from xstilts.experiment.dry_run import DryRunResult, dry_run
from xstilts.experiment.grid import ON_CHANGE, Grid, Phase, make_grid
from xstilts.experiment.plan import PhaseJob, mixture_heads, mixture_kind, plan, task_kind
from xstilts.experiment.retrieval import bucc_like
from xstilts.experiment.rundir import (
                                       CHANCE,
                                       FIELDS,
                                       SPM_FILENAME,
                                       enable_compilation_cache,
                                       read_rows,
                                       write_rows,
)
from xstilts.experiment.runtime import Preempted

__all__ = ["CHANCE", "FIELDS", "ON_CHANGE", "SPM_FILENAME", "DryRunResult", "Experiment", "Grid",
           "Ledger", "Phase", "SettingsChanged",
           "PhaseJob", "Preempted", "bucc_like", "dry_run", "enable_compilation_cache", "main",
           "make_grid", "mixture_heads", "mixture_kind", "plan", "primary_metrics", "read_rows",
           "run_experiment", "task_kind", "write_rows"]
