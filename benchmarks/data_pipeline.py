"""Input pipeline throughput vs. the model's consumption rate, in one run.

Measures examples/s of two pipelines from files on disk to fixed-shape numpy batches (read ->
XLM-R featurization -> seeded shuffling -> padding), on one CPU process:

* XNLI pairs: the 15 XTREME dev files of ``../shared/data/xnli`` (7,500 pairs);
* QA windows: XQuAD en (1,190 questions -> windows with stride 128, max query 64);

and the base model's training consumption (examples/s of ``benchmarks/model_step.py``'s
``ours`` forward+backward+AdamW step, run as a child process at the same batch and length).
The last line reads ``data_pipeline: <x> ex/s, model consumes <y> ex/s, ratio <x/y>`` with ``x``
the slower of the two pipelines. The tokenizer is the 1000-piece SentencePiece test model
(XLM-R's 250k vocabulary is not available offline); SentencePiece encoding cost grows only
mildly with vocabulary size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _pipeline_rate(build, repeats: int) -> tuple[float, int]:
    """Median examples/s of ``build()`` (returns the number of examples it produced)."""
    rates, count = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = build()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-model", action="store_true", help="pipelines only")
    args = parser.parse_args()

    from xstilts.data import preprocessors as P
    from xstilts.data import readers as r
    from xstilts.data.feature_converters import FeatureBatcher
    from xstilts.data.tasks import LANGUAGES
    from xstilts.tokenization import XLMRTokenizer

    data = Path(args.data)
    tok = XLMRTokenizer(data / "spm" / "test_model.model")
    batch, length = args.batch, args.length

    def drain(features, kind) -> None:
        batcher = FeatureBatcher(features, kind, batch_size=batch, length=length, seed=0)
        for _ in batcher.epoch(0):
            pass

    def xnli() -> int:
        examples = [
            e
            for lang in LANGUAGES["xnli"]
            for e in r.read_xtreme_pair_tsv(data / f"xnli/xtreme_format/dev-{lang}.tsv")
        ]
        features = [P.classification_features(e, tok, length, r.NLI_LABELS) for e in examples]
        drain(features, "classification")
        return len(features)

    def qa() -> int:
        examples = list(r.read_squad_json(data / "xquad/xquad.en.json"))
        features = P.qa_features_for_examples(examples, tok, max_length=length)
        drain(features, "qa")
        return len(features)

    pair_rate, pairs = _pipeline_rate(xnli, args.repeats)
    qa_rate, windows = _pipeline_rate(qa, args.repeats)
    print(f"xnli pairs: {pairs} examples, {pair_rate:.0f} ex/s (batch {batch}, length {length})")
    print(f"qa windows: {windows} windows from 1190 questions, {qa_rate:.0f} windows/s")
    slower = min(pair_rate, qa_rate)
    if args.skip_model:
        print(f"data_pipeline: {slower:.1f} ex/s (model not measured)")
        return

    child = [
        sys.executable, str(REPO / "benchmarks" / "model_step.py"), "--child", "ours",
        f"--layers={args.layers}", f"--hidden={args.hidden}", f"--vocab={args.vocab}",
        f"--batch={batch}", f"--length={length}", "--dtype=float32", f"--steps={args.steps}",
        "--warmup=1",
    ]  # fmt: skip
    env = {**os.environ, "USE_TF": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(child, capture_output=True, text=True, env=env, timeout=1800)
    times = None
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            import json

            times = json.loads(line[len("RESULT ") :])["times"]
    if not times:
        raise SystemExit(f"model_step child failed (rc {out.returncode}): {out.stderr[-2000:]}")
    model_rate = batch / statistics.median(times)
    print(
        f"model: {args.layers} layers x {args.hidden}, vocab {args.vocab}, fp32 train step "
        f"median {statistics.median(times):.2f} s for batch {batch} x {length}"
    )
    print(
        f"data_pipeline: {slower:.1f} ex/s, model consumes {model_rate:.2f} ex/s, "
        f"ratio {slower / model_rate:.1f}"
    )


if __name__ == "__main__":
    main()
