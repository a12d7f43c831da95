"""Subprocess worker of the multi-host experiment test (not a test module).

    python tests/experiment_worker.py '<json spec>'

Spec keys: ``run_dir``, ``data_dir``, ``devices`` (local CPU devices), either ``pretrained`` (a
tiny Hugging Face checkpoint folder that also holds the tokenizer) with ``vocab_size`` (the
checkpoint's) or ``from_scratch`` (the grid trains its SentencePiece model and runs phase-0 MLM),
optional ``intermediate`` (config -> Mixture beside the baseline) and ``english_config``,
``out`` (a folder: this process writes ``process<k>.json`` there with the rows ``run()``
returned, the report's markdown and every path the experiment/report modules wrote), optional
``distributed`` ({coordinator, num_processes, process_id}) and ``forbid_training`` (any
``train.train`` call is an error: every cell must be skipped as finished), ``worker`` /
``cells`` (a launch sharing the run directory, ``poll_seconds`` 0.2; the output then also
lists the cells this launch computed, ``started``).
"""

from __future__ import annotations

import json
import logging
import os
import sys

import worker_bootstrap  # this script's directory is on sys.path

spec = json.loads(sys.argv[1])
if os.environ.get("XSTILTS_WORKER_LOG"):  # debugging: timestamps of every phase on stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
worker_bootstrap.start(spec)  # fake devices, jax.distributed

import jax  # noqa: E402

from xstilts import experiment, partitioning, report  # noqa: E402
from xstilts import train as train_lib  # noqa: E402
from xstilts.experiment import rundir  # noqa: E402
from xstilts.models.xlmr import XLMRConfig  # noqa: E402

written: list[str] = []
for module, name in ((rundir, "atomic_bytes"), (report, "_atomic")):
    original = getattr(module, name)

    def recording(path, data, _original=original):
        written.append(os.path.relpath(str(path), spec["run_dir"]))
        return _original(path, data)

    setattr(module, name, recording)

if spec.get("forbid_training"):
    def must_not_train(**kwargs):
        raise AssertionError(f"trained {kwargs['model_dir']} again")

    train_lib.train = must_not_train

if spec.get("from_scratch"):
    start = {"spm_vocab_size": 300, "pretrain_mixture": "synthetic.mlm",
             "pretrain": {"steps": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 48,
                          "save_every_steps": 2}}
else:
    start = {"pretrained": spec["pretrained"], "tokenizer_dir": spec["pretrained"]}
grid = experiment.make_grid(
    run_dir=spec["run_dir"], data_dir=spec["data_dir"], **start,
    model_config=XLMRConfig.tiny(num_hidden_layers=1, vocab_size=spec.get("vocab_size", 300),
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    intermediate={"baseline": None, **spec.get("intermediate", {})},
    english_config=spec.get("english_config"), targets=["synthetic.paraphrase"],
    retrieval=["synthetic.parallel"], seeds=[0],
    intermediate_phase={"steps": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 48},
    finetune={"steps": 2, "batch_size": 8, "learning_rate": 1e-3, "max_length": 48,
              "eval_every_steps": 2, "save_every_steps": 2},
    tiers={"en": "high", "xa": "medium", "xb": "medium", "xc": "low", "xd": "low"},
    compilation_cache=False,  # the test session's JAX_COMPILATION_CACHE_DIR is inherited
    worker=spec.get("worker", False), cells=spec.get("cells"), poll_seconds=0.2)
partitioner = partitioning.Partitioner(partitioning.create_mesh(data=jax.device_count()))
driver = experiment.Experiment(grid, partitioner)
rows = driver.run()
text = report.write_report(spec["run_dir"])
os.makedirs(spec["out"], exist_ok=True)
with open(os.path.join(spec["out"], f"process{jax.process_index()}.json"), "w") as f:
    json.dump({"rows": rows, "report": text, "written": written,
               "started": driver.ledger.started,
               "process_count": jax.process_count(), "device_count": jax.device_count()}, f)
if "distributed" in spec:
    jax.distributed.shutdown()
