"""The embedded demo (``make demo``): the X-STILTs experiment end to end on a CPU in minutes.

Writes the seeded synthetic multilingual world (five languages, two of them low-resource),
trains a SentencePiece model and a tiny XLM-R with MLM on it, runs the grid of
``gin/experiments/demo.gin`` (baseline, English-only and multilingual intermediate NLI) x
(UDPOS- and PAN-X-like targets) x seeds with zero-shot evaluation in every language
and Tatoeba/BUCC-style retrieval, then writes the report. Re-running resumes: finished cells are
skipped, an interrupted one continues from its checkpoint.

    python -m xstilts.demo [--run_dir demo_out] [--fresh] [--gin.NAME=VALUE ...]
    python -m xstilts.demo --roundtrip [--preset base]   # the Hugging Face checkpoint round trip
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import jax
import numpy as np

from xstilts import experiment, gin_utils, report
from xstilts.data.synthetic import SyntheticWorld
from xstilts.experiment import cells
from xstilts.models.convert import load_hf_checkpoint, save_hf_checkpoint, task_params
from xstilts.models.heads import XLMRForMaskedLM
from xstilts.models.xlmr import XLMRConfig, XLMRModel, count_params
from xstilts.results import is_url, location

DEMO_GIN = "experiments/demo.gin"


def _batch(config: XLMRConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = (16, 11, 5)
    ids = np.full((len(lengths), 16), config.pad_token_id, np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(4, config.vocab_size - 1, n)
        ids[row, 0], ids[row, n - 1] = config.bos_token_id, config.eos_token_id
    return ids, (ids != config.pad_token_id).astype(np.int32)


def roundtrip(argv: list[str] | None = None) -> None:
    """A real checkpoint round trip (``python -m xstilts.demo --roundtrip``)."""
    parser = argparse.ArgumentParser(prog="python -m xstilts.demo --roundtrip",
                                     description="tiny XLM-R Hugging Face export/import round trip")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--checkpoint", help="a Hugging Face XLM-R folder to load instead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoint
        if folder is None:
            config = XLMRConfig.preset(args.preset)
            ids, mask = _batch(config, args.seed)
            mlm = XLMRForMaskedLM(config)
            params = mlm.init(jax.random.key(args.seed), ids, mask)["params"]
            folder = save_hf_checkpoint(config, params, tmp)
            print(f"exported a random {args.preset} XLM-R ({count_params(params):,} parameters) "
                  f"to {folder}")
        config, params, report = load_hf_checkpoint(folder, return_report=True)
        print(f"loaded {report.source}: heads {report.heads}, missing {report.missing}, "
              f"unexpected {report.unexpected}")
        ids, mask = _batch(config, args.seed)
        _, hidden = jax.jit(lambda p, i, m: XLMRModel(config).apply(
            {"params": p}, i, m, output_hidden_states=True))(params, ids, mask)
        real = mask.astype(bool)
        print(f"batch {ids.shape[0]} x {ids.shape[1]}, {int(real.sum())} real tokens")
        print("layer    mean      std    max|h|")
        for layer, h in enumerate(hidden):
            h = np.asarray(h)[real]
            print(f"{layer:5d} {h.mean():8.4f} {h.std():8.4f} {np.abs(h).max():8.3f}")
        if "lm_head" in params:
            model = XLMRForMaskedLM(config)
            logits = np.asarray(model.apply({"params": task_params(params)}, ids, mask))
            top = logits[0, 1:6].argmax(-1)
            print(f"MLM logits {logits.shape}, top ids at positions 1-5 of row 0: {top.tolist()}")
    print(f"round trip finished in {time.perf_counter() - start:.1f} s")


def write_world(data_dir: str) -> None:
    """The synthetic world in native formats under ``data_dir/synthetic`` (once)."""
    marker = os.path.join(data_dir, "synthetic", "WORLD_DONE")
    if os.path.isfile(marker):
        return
    SyntheticWorld(seed=0).write_files(os.path.join(data_dir, "synthetic"))
    with open(marker, "w", encoding="utf-8") as f:
        f.write("seed 0\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--roundtrip" in argv:
        argv.remove("--roundtrip")
        roundtrip(argv)
        return 0
    parser = argparse.ArgumentParser(prog="python -m xstilts.demo", description=__doc__)
    parser.add_argument("--run_dir", default="demo_out", help="where everything is written")
    parser.add_argument("--fresh", action="store_true", help="delete run_dir first")
    parser.add_argument("--data_dir", help="where the synthetic world is written (default "
                        "run_dir/data; a local folder, needed when run_dir is a gs:// URL)")
    parser.add_argument("--gin_file", action="append", default=[],
                        help="extra gin files after demo.gin")
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--on_change", choices=experiment.ON_CHANGE, default=None,
                        help="a rerun with other settings: stop (default), rerun or keep")
    args = parser.parse_args(gin_utils.rewrite_gin_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)
    for noisy in ("absl", "jax", "orbax", "xstilts.train", "xstilts.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    start = time.perf_counter()
    run = location(args.run_dir)  # a gs:// URL stays a URL
    if args.fresh and run.is_dir():
        run.rmtree()
    run_dir = os.fspath(run)
    if args.data_dir is None and is_url(run_dir):
        raise SystemExit(f"python -m xstilts.demo: run_dir {run_dir} is a URL; give --data_dir, "
                         f"a local folder for the synthetic world (the readers read local files)")
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else os.path.join(run_dir, "data")
    write_world(data_dir)
    gin_utils.parse_gin([DEMO_GIN, *args.gin_file], [
        "from xstilts import experiment", f"RUN_DIR = '{run_dir}'", f"DATA_DIR = '{data_dir}'",
        *args.gin_bindings,
        *([f"experiment.run_experiment.on_change = '{args.on_change}'"] if args.on_change
          else [])])
    try:
        gin_utils.configured(experiment.run_experiment)()
    except experiment.SettingsChanged as error:
        print(f"python -m xstilts.demo: {cells.message(error)}", file=sys.stderr)
        return 2
    text = report.write_report(run_dir)
    print(text)
    print(f"demo finished in {time.perf_counter() - start:.0f} s; report, CSV and plots in "
          f"{run / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
