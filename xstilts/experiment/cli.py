"""``run_experiment`` (what gin binds) and ``python -m xstilts.experiment``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from xstilts import gin_utils, partitioning
from xstilts.experiment import cells
from xstilts.experiment.cells import SettingsChanged
from xstilts.experiment.driver import Experiment
from xstilts.experiment.dry_run import dry_run as dry_run_grid
from xstilts.experiment.grid import ON_CHANGE, make_grid
from xstilts.models.xlmr import XLMRConfig

USAGE = """The X-STILTs grid: (0) MLM pre-training, (1) intermediate training, (2) target
fine-tuning, (3) zero-shot evaluation in every language, plus retrieval straight from phase 1.

    python -m xstilts.experiment --gin_file=experiments/demo.gin --gin.RUN_DIR="'/tmp/run'"
    python -m xstilts.experiment --gin_file=experiments/xstilts_large.gin --dry_run
    python -m xstilts.experiment --gin_file=... --worker     # as many launches as you like
"""


def run_experiment(*, run_dir: str, model_config: XLMRConfig,
                   intermediate: Mapping[str, str | None], targets: Sequence[str],
                   dry_run: bool = False,
                   partitioner: partitioning.Partitioner | None = None, progress: bool = False,
                   lowered: dict | None = None, topology: str | None = None,
                   compiled_steps: str | None = None,
                   **settings: Any) -> Any:
    """Run (or, with ``dry_run``, plan and lower) the grid; gin binds the arguments, and the
    rest are ``Grid``'s fields (an unknown one is an error naming the known ones).
    ``topology`` (dry run only): compile each step for that TPU slice with libtpu;
    ``compiled_steps``: the record file that lets a cut-short compile resume (``dry_run``)."""
    grid = make_grid(run_dir=run_dir, model_config=model_config, intermediate=intermediate,
                     targets=targets, **settings)
    if dry_run:
        return dry_run_grid(grid, partitioner=partitioner, lowered=lowered, topology=topology,
                            compiled_steps=compiled_steps)
    if topology is not None or compiled_steps is not None:
        raise ValueError("topology and compiled_steps are for the dry run only (dry_run=True)")
    return Experiment(grid, partitioner=partitioner, progress=progress).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xstilts.experiment",
                                     description=USAGE.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=USAGE)
    parser.add_argument("--gin_file", action="append", default=[])
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--dry_run", action="store_true",
                        help="plan every phase and lower every train step (no data, no "
                             "download, no training)")
    parser.add_argument("--topology", default=None,
                        help="with --dry_run: compile every train step for this TPU slice with "
                             "libtpu (e.g. v5e:2x2) and print its per-chip memory; exit 1 naming "
                             "the steps that do not fit")
    parser.add_argument("--compiled_steps", metavar="FILE", default=None,
                        help="with --topology: record each compiled step in FILE (JSON lines) "
                             "and take the steps already recorded there for the same model, "
                             "mesh, versions and code, so a cut-short dry run resumes")
    parser.add_argument("--on_change", choices=ON_CHANGE, default=None,
                        help="when a recorded cell was computed with other settings: stop and "
                             "print the differences (default), rerun the changed cells and "
                             "everything downstream, or keep the finished ones (marked in the "
                             "report)")
    parser.add_argument("--worker", action="store_true",
                        help="share RUN_DIR with other launches: claim and compute whatever "
                             "cell is free (and ready) until the grid is finished")
    parser.add_argument("--cells", metavar="i/N",
                        help="share RUN_DIR with other launches: compute every N-th cell, "
                             "starting at the i-th (waiting for upstream cells of others)")
    args = parser.parse_args(gin_utils.rewrite_gin_args(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)  # progress lines even where absl set up logging first
    if not args.gin_file:
        raise SystemExit("python -m xstilts.experiment: at least one --gin_file is required")
    bindings = list(args.gin_bindings)
    if args.topology and not args.dry_run:
        raise SystemExit("python -m xstilts.experiment: --topology needs --dry_run")
    if args.dry_run:
        bindings.append("experiment.run_experiment.dry_run = True")
    if args.worker:
        bindings.append("experiment.run_experiment.worker = True")
    if args.cells:
        bindings.append(f"experiment.run_experiment.cells = {args.cells!r}")
    if args.on_change:
        bindings.append(f"experiment.run_experiment.on_change = '{args.on_change}'")
    if args.topology:
        bindings.append(f"experiment.run_experiment.topology = {args.topology!r}")
    if args.compiled_steps:
        if not args.topology:
            raise SystemExit("python -m xstilts.experiment: --compiled_steps needs --topology")
        bindings.append(f"experiment.run_experiment.compiled_steps = {args.compiled_steps!r}")
    gin_utils.parse_gin(args.gin_file, ["from xstilts import experiment", *bindings])
    if not args.dry_run:  # a pod forms before JAX touches a device (create_mesh would too)
        partitioning.initialize_distributed()
    try:
        result = gin_utils.configured(run_experiment)()
    except SettingsChanged as error:
        print(f"python -m xstilts.experiment: {cells.message(error)}", file=sys.stderr)
        return 2
    print(result.summary() if args.dry_run else f"{len(result)} result rows")
    return 1 if args.dry_run and result.unfit else 0
