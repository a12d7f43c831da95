"""Fine-tuning throughput in real (non-pad) tokens per second over an XNLI length distribution:
xstilts' Trainer with length buckets against Hugging Face PyTorch padded to the maximum length
(jiant's way) and with dynamic padding (``DataCollatorWithPadding``).

    python benchmarks/finetune_throughput.py [--quick] [--models tiny,base] [--steps 6] \
        [--group_by_length | --packing]

Lengths: the 7,500 pairs of the 15 XTREME XNLI dev files in ``../shared/data/xnli``, encoded
``<s> A </s></s> B </s>`` with longest-first truncation to ``--length`` by the project's
tokenizer (``XLMRTokenizer``; offline it has only the 1000-piece SentencePiece test model, not
XLM-R's 250k vocabulary, so rows are longer than XLM-R's would be). Token ids are those ids
(within every model's vocabulary), labels the real ones.

Every system trains on the same ``--steps`` batches: ``FeatureBatcher(seed=0)``'s steps
0..S-1 (shuffled, ``--batch`` rows each), sequence classification with 3 labels, fp32, dropout
0.1 (Hugging Face's default, attention probabilities included), AdamW 2e-5, clipping at 1.0.
The defaults, batch 32 at max length 256, are X-STILTs' XNLI fine-tuning setting (jiant's
per-step 4 x 8 accumulation steps, ``../shared/reference/paper.md``); ``--quick`` (6 steps for
tiny, 3 steps of batch 16 for base) is a shortcut whose smaller batch favours the baselines:
the optimizer's fixed cost per step weighs more against our fewer computed tokens.

* **ours**: the real ``Trainer.train_step`` on ``FeatureBatcher(length_buckets=...)`` batches
  (each batch as wide as the smallest bucket holding its longest row; ``--buckets``, default
  every 32 tokens), one example per row unless ``--packing``. Every bucket width the
  timed steps use is compiled by one untimed step first (a fine-tuning run compiles each width
  once); the compile time is printed separately. ``--group_by_length``: also
  ``length_grouping`` over the S timed steps (their rows sorted by length into batches: the
  same rows as the other systems' S steps, checked), as Hugging Face Trainer's
  ``group_by_length``; the baselines stay as they are (random batches). ``--packing``: ours on
  packed classification rows instead (``classification_packing``): the S timed steps' examples
  packed first-fit into rows of ``--length`` tokens (at most ``length // 16`` pairs a row),
  cut into S steps of equally many rows (the same examples, checked; ``--buckets`` applies
  to the packed rows' widths).
* **hf_max**: ``XLMRobertaForSequenceClassification``, the same rows padded to ``--length``.
* **hf_dynamic**: the same, padded by ``DataCollatorWithPadding`` to each batch's longest row.

One untimed warm-up step each, then the S steps timed; each system in its own process (BLAS and
XLA thread pools in one process distort each other on 2 cores), run one after the other. Real
tokens are the same for every system (the rows' tokens), so the ratios are ratios of step
time. The machine is shared: run twice and compare. Last lines, per model:
``finetune_throughput <model>: ours <x> real tok/s, hf_max <y>, hf_dynamic <z>, ratios <x/y>,
<x/z>, padding efficiency ours <p>, max <q>, dynamic <r>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from child_process import run_child  # benchmarks/ is the script's directory

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
SYSTEMS = ("ours", "hf_max", "hf_dynamic")
ENV = {**os.environ, "USE_TF": "0", "TF_CPP_MIN_LOG_LEVEL": "2",
       "TOKENIZERS_PARALLELISM": "false"}
LABELS = {"contradiction": 0, "entailment": 1, "neutral": 2}
# Every 32 tokens: with these lengths (median 63, 90th percentile 131) a shuffled batch of 32's
# longest row is ~170 tokens, which 'auto' (32, 64, 128, 256) would round up to 256.
BUCKETS = "64,96,128,160,192,224"


def _config_kwargs(model: str) -> dict:
    """Hugging Face config fields of the ``tiny`` / ``base`` presets (vocab 32k for base, as
    ``model_step.py``: the ids come from a 1000-piece vocabulary anyway)."""
    if model == "tiny":
        shape = dict(vocab_size=1002, hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=128)
    elif model == "base":
        shape = dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072)
    else:
        raise ValueError(f"model {model!r}: expected tiny or base")
    return dict(**shape, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                bos_token_id=0, eos_token_id=2)


def xnli_features(length: int) -> list[dict]:
    """Classification features of the XNLI dev pairs (every language), in file order."""
    from xstilts.data import readers
    from xstilts.data.tasks import LANGUAGES
    from xstilts.tokenization import XLMRTokenizer

    tok = XLMRTokenizer(DATA / "spm" / "test_model.model")
    features = []
    for lang in LANGUAGES["xnli"]:
        path = DATA / "xnli" / "xtreme_format" / f"dev-{lang}.tsv"
        for row in readers.read_xtreme_pair_tsv(path):
            ids = tok.encode_pair(row["text_a"], row["text_b"], max_length=length)
            features.append({"input_ids": ids, "labels": LABELS[row["label"]]})
    return features


def batches(args: argparse.Namespace, buckets, grouped: bool = False) -> list[dict]:
    """The timed steps' batches (``FeatureBatcher`` steps 0..S-1); ``grouped``: with
    ``length_grouping=S``, which sorts exactly those S batches' rows by length (the same rows
    as the ungrouped steps 0..S-1, so every system trains on the same examples)."""
    from xstilts.data.feature_converters import FeatureBatcher

    batcher = FeatureBatcher(xnli_features(args.length), "classification",
                             batch_size=args.batch, length=args.length, seed=0,
                             length_buckets=buckets,
                             length_grouping=args.steps if grouped else 0)
    return [batcher.batch(step) for step in range(args.steps)]


def examples_of(steps: list[dict]) -> list[tuple[int, ...]]:
    """The sorted token rows of every example the batches hold (packed rows split by
    ``segment_ids``)."""
    out = []
    for b in steps:
        for r in range(len(b["input_ids"])):
            ids, seg = b["input_ids"][r], b.get("segment_ids", b["attention_mask"])[r]
            out.extend(tuple(ids[seg == s].tolist()) for s in range(1, int(seg.max()) + 1))
    return sorted(out)


def packed_batches(args: argparse.Namespace, buckets) -> list[dict]:
    """The timed steps' examples (``batches(args, None)``) in packed classification rows:
    ``args.steps`` batches of equally many rows (the last padded with empty rows)."""
    import math

    from xstilts.data.feature_converters import FeatureBatcher

    features = xnli_features(args.length)
    plain = FeatureBatcher(features, "classification", batch_size=args.batch,
                           length=args.length, seed=0)
    chosen = [features[i] for step in range(args.steps) for i in plain.indices(step) if i >= 0]
    options = dict(length=args.length, shuffle=False, classification_packing=True,
                   length_buckets=buckets)
    rows = FeatureBatcher(chosen, "classification", batch_size=1, **options).num_rows
    packer = FeatureBatcher(chosen, "classification",
                            batch_size=math.ceil(rows / args.steps), **options)
    steps = [packer.batch(step) for step in range(packer.steps_per_epoch)]
    if examples_of(steps) != examples_of(batches(args, None)):
        raise AssertionError("packing changed which examples the timed steps hold")
    return steps


def run_ours(args: argparse.Namespace) -> dict:
    import jax
    from step_timing import classification_trainer  # benchmarks/ is the script's directory

    from xstilts.models.xlmr import XLMRConfig

    config = XLMRConfig(**_config_kwargs(args.model))
    tr = classification_trainer(config)
    keys = ("input_ids", "attention_mask", "labels", "example_mask", "segment_ids",
            "segment_starts")
    made = packed_batches(args, parse_buckets(args.buckets)) if args.packing else \
        batches(args, parse_buckets(args.buckets), args.group_by_length)
    steps = [{k: b[k] for k in keys if k in b} for b in made]
    state = tr.init_state(jax.random.key(0), (args.batch, args.length))
    start = time.perf_counter()
    widths: dict[int, dict] = {}
    for batch in steps:  # one untimed step per width: its compile
        widths.setdefault(batch["input_ids"].shape[1], batch)
    for batch in widths.values():
        state, metrics = tr.train_step(state, batch)
        float(metrics["loss"])
    compile_s = time.perf_counter() - start
    times = []
    for batch in steps:
        t0 = time.perf_counter()
        state, metrics = tr.train_step(state, batch)
        float(metrics["loss"])
        times.append(time.perf_counter() - t0)
    return {"times": times, "compile_s": compile_s,
            "widths": [b["input_ids"].shape[1] for b in steps],
            "computed": sum(int(b["input_ids"].size) for b in steps),
            "rows": [int(b["input_ids"].shape[0]) for b in steps]}


def run_hf(args: argparse.Namespace, dynamic: bool) -> dict:
    import torch
    from transformers import DataCollatorWithPadding, XLMRobertaConfig, XLMRobertaTokenizerFast
    from transformers import XLMRobertaForSequenceClassification as Model

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 2)
    model = Model(XLMRobertaConfig(**_config_kwargs(args.model), num_labels=3)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, eps=1e-8)

    tokenizer = XLMRobertaTokenizerFast(vocab_file=str(DATA / "spm" / "test_model.model"))
    assert tokenizer.pad_token_id == 1
    collator = DataCollatorWithPadding(
        tokenizer, padding="longest" if dynamic else "max_length",
        max_length=None if dynamic else args.length, return_tensors="pt")
    steps = []
    for b in batches(args, None):  # the same rows, as per-example features
        rows = [r for r in range(args.batch) if b["example_mask"][r]]
        steps.append(collator([{"input_ids": b["input_ids"][r, :b["attention_mask"][r].sum()]
                                .tolist(), "labels": int(b["labels"][r])} for r in rows]))
    times = []
    for i, batch in enumerate([steps[0], *steps]):  # steps[0] once untimed: warm-up
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        if i:
            times.append(time.perf_counter() - t0)
    return {"times": times, "widths": [int(b["input_ids"].shape[1]) for b in steps]}


def _spawn(system: str, argv: list[str], timeout: float) -> dict | None:
    return run_child(__file__, system, argv, timeout, env=ENV)


def parse_buckets(text: str):
    """``--buckets``: 'auto', 'off' or comma-separated lengths."""
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    return tuple(int(w) for w in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", dest="system", choices=SYSTEMS)
    parser.add_argument("--model", default="tiny", help="(children) tiny or base")
    parser.add_argument("--models", default="tiny,base")
    parser.add_argument("--length", type=int, default=256, help="the task's maximum length")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per system")
    parser.add_argument("--buckets", default=BUCKETS,
                        help="ours: a list of lengths (L is added), 'auto' (32, 64, 128, ... L) "
                             "or 'off' (every batch L wide)")
    parser.add_argument("--group_by_length", action="store_true",
                        help="ours: length_grouping over the timed steps (the same rows as the "
                             "others' steps, sorted by length into batches: HF Trainer's "
                             "group_by_length, which the dynamic-padding baseline does not use)")
    parser.add_argument("--packing", action="store_true",
                        help="ours: packed classification rows holding the timed steps' "
                             "examples (classification_packing)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer steps and rows for base (minutes, not tens of minutes)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if args.packing and args.group_by_length:
        parser.error("--packing and --group_by_length: choose one (ours has one order)")
    if args.system:
        result = run_ours(args) if args.system == "ours" else \
            run_hf(args, dynamic=args.system == "hf_dynamic")
        print("RESULT " + json.dumps(result))
        return

    import numpy as np

    for model in args.models.split(","):
        steps, batch = args.steps, args.batch
        if args.quick:
            steps, batch = (min(steps, 6), batch) if model == "tiny" else \
                (min(steps, 3), min(batch, 16))
        argv = [f"--model={model}", f"--length={args.length}", f"--batch={batch}",
                f"--steps={steps}", f"--buckets={args.buckets}"]
        if args.group_by_length:
            argv.append("--group_by_length")
        if args.packing:
            argv.append("--packing")
        run = argparse.Namespace(length=args.length, batch=batch, steps=steps)
        rows = {flag: sorted(tuple(r[m.astype(bool)]) for b in batches(run, None, flag)
                             for r, m in zip(b["input_ids"], b["attention_mask"], strict=True))
                for flag in (False, True)}
        if rows[False] != rows[True]:
            raise AssertionError("length grouping changed which rows the timed steps hold")
        real = [int(b["attention_mask"].sum()) for b in batches(run, None)]
        print(f"finetune_throughput {model}: {steps} steps of batch {batch}, max length "
              f"{args.length}, buckets {args.buckets}"
              f"{', grouped by length' if args.group_by_length else ''}"
              f"{', ours packed' if args.packing else ''}, {sum(real)} real tokens "
              f"(loadavg {os.getloadavg()[0]:.1f})", flush=True)
        rates, efficiency = {}, {}
        for system in SYSTEMS:
            got = _spawn(system, argv, args.timeout)
            if not got:
                continue
            rates[system] = sum(real) / sum(got["times"])
            computed = got.get("computed", batch * sum(got["widths"]))
            efficiency[system] = sum(real) / computed
            extra = f", compile {got['compile_s']:.1f} s" if "compile_s" in got else ""
            if args.packing and "rows" in got:
                extra += f", {got['rows'][0]} packed rows a step"
            print(f"  {system:>10}: {rates[system]:9.1f} real tok/s, step median "
                  f"{np.median(got['times']):.3f} s, widths {sorted(set(got['widths']))}, "
                  f"padding efficiency {efficiency[system]:.2f}{extra}", flush=True)
        if len(rates) == len(SYSTEMS):
            print(f"finetune_throughput {model}: ours {rates['ours']:.1f} real tok/s, hf_max "
                  f"{rates['hf_max']:.1f}, hf_dynamic {rates['hf_dynamic']:.1f}, ratios "
                  f"{rates['ours'] / rates['hf_max']:.2f}x max, "
                  f"{rates['ours'] / rates['hf_dynamic']:.2f}x dynamic, padding efficiency "
                  f"ours {efficiency['ours']:.2f}, max {efficiency['hf_max']:.2f}, dynamic "
                  f"{efficiency['hf_dynamic']:.2f}")


if __name__ == "__main__":
    main()
