"""Input pipeline throughput: readers + featurization against Hugging Face's fast tokenizer,
one host against two, and against what the model consumes; all in one run.

Sections (each printed as one line, examples/s on this CPU):

* ``tokenize``: the 15 XTREME XNLI dev files of ``../shared/data/xnli`` (7,500 pairs), pair
  encoding with longest-first truncation to ``--length``: ours per example (``encode_text`` per
  string), ours batched (``encode_texts``: one SentencePiece call per 2,000 examples, the path
  ``pipeline.featurize`` takes), and ``transformers``' ``XLMRobertaTokenizerFast`` on the same
  strings in its own process (``tokenizer(a, b, truncation=True)``, batched, Rust); ids equal.
* ``pairs``: read + featurize + batch through the registered tasks ``xnli.<lang>`` (the real
  readers, ``pipeline.task_features`` without a cache, then ``FeatureBatcher``).
* ``qa``: XQuAD en questions -> 384-token windows (stride 128), read + featurize + batch.
* ``hosts``: ``synthetic.nli.en`` with ``--hosts_examples`` training examples featurized into a
  shared cache by one process, then by two processes at once (``shard_info`` 0/2 and 1/2, each
  featurizes half the parts and reads the other half); wall time of the slower host.
* ``streams``: the same task (``synthetic.nli.en`` train, length 128, batch 32 per host) from
  files to fixed-shape batches by the native path (``pipeline.task_batcher``: featurize into a
  shared cache, host ``i`` featurizing its parts, then ``FeatureBatcher``) and by the seqio path
  (``seqio_tasks.seqio_batches``: the registered seqio Task, ``XLMRVocabulary`` in TF, the
  encoder feature converter; rows batched from source to batch, ``seqio_batched``; the load
  average is printed, since other work on the machine moves both figures), each with 1 host
  and with 2 hosts (two processes at once, shard 0/2 and 1/2); examples/s per host and in
  all, for one epoch's rows. The paper-scale model
  figure they are compared with: XLM-R Large, batch 32 x 256, bf16, ``PAPER_STEP_FLOPS`` (the
  TPU compiler's cost analysis of the train step, issue 16: 4.10e12 FLOPs per chip x 4 chips)
  at 45% MFU of one H100 (989 TFLOP/s dense bf16), i.e. ~870 examples/s per accelerator.
* ``padding``: padding efficiency (real tokens / computed tokens, issue 16 item 3) over the
  XNLI-like length distribution of the 15 XTREME XNLI dev files (``xnli.<lang>``, lengths 128
  and 256, batch 32 shuffled, one epoch): fixed max-length padding, length buckets (``"auto"``:
  L/8, 2L/8, ..., L), buckets with ``length_grouping=32`` (rows of similar length batched
  together), pad-to-longest (dynamic, for reference: a new shape every batch) and packed
  classification rows (``classification_packing``: whole pairs first-fit into rows of ``L``
  tokens, at most ``L // 16`` per row, batch 32 rows; with ``"auto"`` buckets beside it);
  and MLM rows from the same premises as documents: one document per row, the token stream
  cut into rows (``stream``), and rows packed from document segments (``documents``, with
  ``segment_ids``).
  The lengths are the test SentencePiece model's (1,000 pieces: longer than XLM-R's).
* ``model``: the base model's fp32 training step (``benchmarks/model_step.py``'s ``ours``, a child
  process at the same batch and length): the examples/s the pipeline must keep up with.

The last line: ``data_pipeline: <x> ex/s, model consumes <y> ex/s, ratio <x/y>``, ``x`` the
slower of pairs and qa. The tokenizer is the 1000-piece SentencePiece test model (XLM-R's 250k
vocabulary is not available offline). Peers and the model each run in their own process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = {**os.environ, "USE_TF": "0", "TF_CPP_MIN_LOG_LEVEL": "2", "TOKENIZERS_PARALLELISM": "false"}


def _median_rate(build, repeats: int) -> tuple[float, int]:
    """Median examples/s of ``build()`` (returns the number of examples it handled)."""
    rates, count = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = build()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates), count


def _xnli_pairs(data: Path) -> tuple[list[str], list[str]]:
    from xstilts.data import readers
    from xstilts.data.tasks import LANGUAGES

    rows = [e for lang in LANGUAGES["xnli"]
            for e in readers.read_xtreme_pair_tsv(data / f"xnli/xtreme_format/dev-{lang}.tsv")]
    return [e["text_a"] for e in rows], [e["text_b"] for e in rows]


def _child_result(command: list[str], what: str, **env: str) -> dict:
    out = subprocess.run(command, capture_output=True, text=True, env={**ENV, **env},
                         timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{what} child failed (rc {out.returncode}): {out.stderr[-2000:]}")


# ---------------------------------------------------------------------------- child processes
def child_hf(data: Path, length: int, repeats: int) -> None:
    """HF fast tokenizer on the XNLI pairs (no JAX, no xstilts tokenizer in this process)."""
    from transformers import XLMRobertaTokenizerFast

    first, second = _xnli_pairs(data)
    tok = XLMRobertaTokenizerFast(vocab_file=str(data / "spm" / "test_model.model"))
    ids: list = []

    def run() -> int:
        nonlocal ids
        ids = tok(first, second, truncation=True, max_length=length)["input_ids"]
        return len(ids)

    rate, count = _median_rate(run, repeats)
    print("RESULT " + json.dumps({"rate": rate, "count": count, "ids": ids}))


def child_host(data_dir: str, cache: str, index: int, count: int, part_size: int) -> None:
    """One host featurizing its parts of synthetic.nli.en train (and reading the others')."""
    from xstilts.data import pipeline
    from xstilts.data.feature_converters import ShardInfo
    from xstilts.tokenization import XLMRTokenizer

    tok = XLMRTokenizer(REPO.parent / "shared" / "data" / "spm" / "test_model.model")
    start = time.perf_counter()
    features = pipeline.task_features(
        "synthetic.nli.en", "train", tok, data_dir=data_dir, cache_dir=cache,
        shard_info=ShardInfo(index, count), part_size=part_size)
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - start,
                                  "features": len(features)}))


def child_stream(path: str, data_dir: str, cache: str, index: int, count: int, rows: int,
                 batch: int, length: int) -> None:
    """One host reading ``rows`` rows of synthetic.nli.en train batches by one path."""
    from xstilts.tokenization import XLMRTokenizer

    spm = REPO.parent / "shared" / "data" / "spm" / "test_model.model"
    if path == "native":
        from xstilts.data import pipeline
        from xstilts.data.feature_converters import ShardInfo

        tok = XLMRTokenizer(spm)
        start = time.perf_counter()
        batcher = pipeline.task_batcher(
            "synthetic.nli.en", "train", tok, batch_size=batch, data_dir=data_dir,
            max_length=length, shard_info=ShardInfo(index, count), cache_dir=cache,
            part_size=5000)
        stream = (batcher.batch(step) for step in range(10**9))
    else:
        import seqio

        from xstilts.data import seqio_tasks
        from xstilts.tokenization import xlmr_vocabulary

        vocabulary = xlmr_vocabulary(spm)
        seqio_tasks.register_task(seqio_tasks.get_task("synthetic.nli.en"), data_dir, vocabulary)
        seqio_tasks.warm_up(vocabulary)
        start = time.perf_counter()
        stream = (b for _, b in seqio_tasks.seqio_batches(
            "synthetic.nli.en", sequence_length=length, batch_size=batch,
            shard_info=seqio.ShardInfo(index, count), seed=0))
    seen = int(next(stream)["example_mask"].sum())
    first = time.perf_counter() - start
    while seen < rows:
        seen += int(next(stream)["example_mask"].sum())
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - start, "rows": seen,
                                  "first": first}))


def _run_hosts(arguments: list[str], count: int, what: str) -> list[dict]:
    """RESULT dicts of ``count`` child processes (``--index=i``) run at once, with a fresh
    shared cache directory."""
    with tempfile.TemporaryDirectory() as cache:
        command = [sys.executable, __file__, *arguments, f"--cache={cache}", f"--count={count}"]
        procs = [subprocess.Popen([*command, f"--index={i}"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=ENV)
                 for i in range(count)]
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=1800)
            lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
            if not lines:
                raise SystemExit(f"{what} child failed (rc {proc.returncode}): {stderr[-2000:]}")
            results.append(json.loads(lines[0][len("RESULT "):]))
    return results


def _streams(path: str, data_dir: str, count: int, examples: int, batch: int, length: int
             ) -> tuple[float, float, float]:
    """(examples/s per host, examples/s in all, seconds to the first batch) of ``count`` host
    processes reading one epoch from the files."""
    results = _run_hosts(["--child", "stream", f"--path={path}", f"--data_dir={data_dir}",
                          f"--rows={examples // count}", f"--batch={batch}",
                          f"--length={length}"], count, f"{path} stream")
    per_host = statistics.mean(r["rows"] / r["seconds"] for r in results)
    return (per_host, sum(r["rows"] for r in results) / max(r["seconds"] for r in results),
            max(r["first"] for r in results))


def _hosts(data_dir: str, count: int, part_size: int) -> tuple[float, int]:
    """Wall seconds of the slower of ``count`` host processes featurizing into a fresh cache."""
    results = _run_hosts(["--child", "host", f"--data_dir={data_dir}",
                          f"--part_size={part_size}"], count, "host")
    assert len({r["features"] for r in results}) == 1, results
    return max(r["seconds"] for r in results), results[0]["features"]


# ------------------------------------------------------------------------------------ sections
def tokenize_section(data: Path, length: int, repeats: int) -> None:
    from xstilts.data import preprocessors as P
    from xstilts.tokenization import XLMRTokenizer

    first, second = _xnli_pairs(data)
    tok = XLMRTokenizer(data / "spm" / "test_model.model")

    def per_example() -> int:
        pairs = zip(first, second, strict=True)
        return len([P.truncated_pair(tok, a, b, length, None) for a, b in pairs])

    batched_ids: list = []

    def batched() -> int:
        nonlocal batched_ids
        fast = P.PreEncoded(tok, [*first, *second])
        pairs = zip(first, second, strict=True)
        batched_ids = [P.truncated_pair(fast, a, b, length, None) for a, b in pairs]
        return len(batched_ids)

    slow_rate, n = _median_rate(per_example, repeats)
    fast_rate, _ = _median_rate(batched, repeats)
    command = [sys.executable, __file__, "--child", "hf", f"--data={data}",
               f"--length={length}", f"--repeats={repeats}"]
    hf = _child_result(command, "HF tokenizer")  # one thread, as ours
    threads = _child_result(command, "HF tokenizer", TOKENIZERS_PARALLELISM="true")
    same = sum(a == b for a, b in zip(batched_ids, hf["ids"], strict=True))
    print(f"tokenize: {n} XNLI pairs, length {length}, one thread each: ours per example "
          f"{slow_rate:.0f} ex/s, ours batched {fast_rate:.0f} ex/s, HF XLMRobertaTokenizerFast "
          f"{hf['rate']:.0f} ex/s (own process; {threads['rate']:.0f} ex/s with its Rust "
          f"threads on {os.cpu_count()} cores); batched / HF fast {fast_rate / hf['rate']:.2f}x "
          f"(vs threaded {fast_rate / threads['rate']:.2f}x); ids equal on {same}/{n}")


def pipeline_sections(data: Path, batch: int, length: int, repeats: int) -> float:
    from xstilts.data import pipeline
    from xstilts.data.feature_converters import FeatureBatcher
    from xstilts.data.tasks import LANGUAGES
    from xstilts.tokenization import XLMRTokenizer

    tok = XLMRTokenizer(data / "spm" / "test_model.model")

    def drain(features, kind) -> None:
        batcher = FeatureBatcher(features, kind, batch_size=batch, length=length, seed=0)
        for _ in batcher.epoch(0):
            pass

    def pairs() -> int:
        total = 0
        for lang in LANGUAGES["xnli"]:
            features = pipeline.task_features(f"xnli.{lang}", "dev", tok, data_dir=data,
                                              max_length=length)
            drain(features, "classification")
            total += len(features)
        return total

    def qa() -> int:
        features = pipeline.task_features("xquad.en", "test", tok, data_dir=data, max_length=384)
        batcher = FeatureBatcher(features, "qa", batch_size=batch, length=384, seed=0)
        for _ in batcher.epoch(0):
            pass
        return len(features)

    pair_rate, n_pairs = _median_rate(pairs, repeats)
    qa_rate, windows = _median_rate(qa, repeats)
    print(f"pairs: {n_pairs} XNLI dev pairs read + featurized + batched, {pair_rate:.0f} ex/s "
          f"(batch {batch}, length {length})")
    print(f"qa: {windows} XQuAD en windows (length 384, stride 128) read + featurized + "
          f"batched, {qa_rate:.0f} windows/s")
    return min(pair_rate, qa_rate)


def padding_section(data: Path) -> None:
    from xstilts.tokenization import XLMRTokenizer

    tok = XLMRTokenizer(data / "spm" / "test_model.model")
    for length in (128, 256):
        _padding_at(data, tok, length)


def _padding_at(data: Path, tok, length: int) -> None:
    import numpy as np

    from xstilts.data import pipeline, readers
    from xstilts.data import preprocessors as P
    from xstilts.data.feature_converters import FeatureBatcher
    from xstilts.data.tasks import LANGUAGES

    batch = 32
    features = [f for lang in LANGUAGES["xnli"] for f in pipeline.task_features(
        f"xnli.{lang}", "dev", tok, data_dir=data, max_length=length)]

    def efficiency(rows, kind, buckets=None, dynamic=False, grouping=0, packing=False
                   ) -> tuple[float, int]:
        batcher = FeatureBatcher(rows, kind, batch_size=batch, length=length, seed=0,
                                 length_buckets=buckets, length_grouping=grouping,
                                 mlm={"mask_id": tok.mask_id} if kind == "mlm" else None,
                                 classification_packing=packing)
        real = computed = 0
        widths = set()
        for b in batcher.epoch(0):
            tokens = b["attention_mask"].sum(-1)
            width = int(tokens.max()) if dynamic else b["input_ids"].shape[-1]
            widths.add(width)
            real += int(tokens.sum())
            computed += len(tokens) * width
        return real / computed, len(widths)

    fixed, _ = efficiency(features, "classification")
    bucketed, shapes = efficiency(features, "classification", "auto")
    dynamic, dynamic_shapes = efficiency(features, "classification", dynamic=True)
    grouped, grouped_shapes = efficiency(features, "classification", "auto", grouping=32)
    packed_pairs, _ = efficiency(features, "classification", packing=True)
    packed_cut, packed_shapes = efficiency(features, "classification", "auto", packing=True)
    per_row = len(features) / FeatureBatcher(features, "classification", batch_size=batch,
                                             length=length, classification_packing=True).num_rows
    lengths = np.array([len(f["input_ids"]) for f in features])
    print(f"padding: {len(features)} XNLI dev pairs at length {length}, batch {batch} (row "
          f"tokens median {np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}): "
          f"real/computed tokens fixed {fixed:.3f}, buckets auto {bucketed:.3f} ({shapes} "
          f"shapes, {bucketed / fixed:.2f}x), buckets + length_grouping=32 {grouped:.3f} "
          f"({grouped_shapes} shapes, {grouped / fixed:.2f}x), pad-to-longest {dynamic:.3f} "
          f"({dynamic_shapes} shapes), packed {packed_pairs:.3f} ({per_row:.1f} pairs per row "
          f"of at most {max(1, length // 16)}, {packed_pairs / fixed:.2f}x), packed + buckets "
          f"auto {packed_cut:.3f} ({packed_shapes} shapes)")
    texts = [e["text_a"] for lang in LANGUAGES["xnli"]
             for e in readers.read_xtreme_pair_tsv(data / f"xnli/xtreme_format/dev-{lang}.tsv")]
    single = [{"input_ids": np.asarray([tok.bos_id, *tok.encode_text(t)[:length - 2],
                                        tok.eos_id], np.int32)} for t in texts]
    one, _ = efficiency(single, "mlm")
    stream, _ = efficiency(P.mlm_features(texts, tok, length, "stream"), "mlm")
    packed_rows = P.mlm_features(texts, tok, length, "documents")
    packed, _ = efficiency(packed_rows, "mlm")
    segments = np.mean([int(r["segment_ids"].max()) for r in packed_rows])
    print(f"padding: MLM over {len(texts)} XNLI premises at length {length}: one document per "
          f"row {one:.3f}, stream rows {stream:.3f}, packed documents {packed:.3f} "
          f"({segments:.1f} segments per row)")


def hosts_section(examples: int, part_size: int) -> None:
    from xstilts.data.synthetic import SyntheticWorld

    with tempfile.TemporaryDirectory() as root:
        SyntheticWorld(seed=0).write_files(Path(root) / "synthetic",
                                           sizes={"train": examples, "dev": 8, "test": 8})
        one, n = _hosts(root, 1, part_size)
        two, _ = _hosts(root, 2, part_size)
    print(f"hosts: synthetic.nli.en train, {n} examples in parts of {part_size}: 1 host "
          f"{one:.2f} s ({n / one:.0f} ex/s), 2 hosts {two:.2f} s ({n / two:.0f} ex/s per "
          f"split), speed-up {one / two:.2f}x")


PAPER_STEP_FLOPS = 4.10e12 * 4  # XLM-R Large B32xL256 train step (TPU cost analysis, 4 chips)
PAPER_BATCH = 32
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s (NVIDIA H100 SXM datasheet)
PAPER_MFU = 0.45


def paper_model_rate() -> float:
    """Examples/s one accelerator consumes at paper scale (see the module docstring)."""
    return PAPER_BATCH / (PAPER_STEP_FLOPS / (PAPER_MFU * H100_BF16_PEAK))


def streams_section(examples: int) -> None:
    from xstilts.data.synthetic import SyntheticWorld

    batch, length = 32, 128
    rates = {}
    with tempfile.TemporaryDirectory() as root:
        SyntheticWorld(seed=0).write_files(Path(root) / "synthetic",
                                           sizes={"train": examples, "dev": 8, "test": 8})
        for path in ("native", "seqio"):
            for count in (1, 2):
                rates[path, count] = _streams(path, root, count, examples, batch, length)
    need = 3 * paper_model_rate()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"streams: load average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} cores")
    for count in (1, 2):
        native, seqio = rates["native", count], rates["seqio", count]
        print(f"streams: {count} host(s), synthetic.nli.en train ({examples} examples, batch "
              f"{batch} x {length} per host, files to batches): native {native[0]:.0f} ex/s per "
              f"host ({native[1]:.0f} in all, first batch after {native[2]:.1f} s), seqio "
              f"{seqio[0]:.0f} ex/s per host ({seqio[1]:.0f} in all, first batch after "
              f"{seqio[2]:.1f} s); seqio / native {seqio[0] / native[0]:.2f}")
    slowest = min(r[0] for r in rates.values())
    print(f"streams: paper-scale model {paper_model_rate():.0f} ex/s per accelerator (XLM-R "
          f"Large B32xL256 bf16, {PAPER_STEP_FLOPS:.2e} FLOPs/step at {PAPER_MFU:.0%} MFU of an "
          f"H100); the slowest path per host {slowest:.0f} ex/s = "
          f"{slowest / paper_model_rate():.1f}x it (goal >= 3x: {need:.0f} ex/s)")


def model_rate(args: argparse.Namespace) -> float:
    child = [
        sys.executable, str(REPO / "benchmarks" / "model_step.py"), "--child", "ours",
        f"--layers={args.layers}", f"--hidden={args.hidden}", f"--vocab={args.vocab}",
        f"--batch={args.batch}", f"--length={args.length}", "--dtype=float32",
        f"--steps={args.steps}", "--warmup=1",
    ]  # fmt: skip
    times = _child_result(child, "model_step")["times"]
    step = statistics.median(times)
    print(f"model: {args.layers} layers x {args.hidden}, vocab {args.vocab}, fp32 train step "
          f"median {step:.2f} s for batch {args.batch} x {args.length}")
    return args.batch / step


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
    parser.add_argument("--hosts_examples", type=int, default=200000)
    parser.add_argument("--part_size", type=int, default=10000)
    parser.add_argument("--streams_examples", type=int, default=100000)
    parser.add_argument("--skip-model", action="store_true", help="pipelines only")
    parser.add_argument("--sections", default="tokenize,pairs,hosts,streams,padding",
                        help="comma-separated: tokenize, pairs (pairs and qa), hosts, streams, "
                             "padding")
    parser.add_argument("--child", choices=["hf", "host", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=["native", "seqio"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = Path(args.data)
    if args.child == "hf":
        return child_hf(data, args.length, args.repeats)
    if args.child == "host":
        return child_host(args.data_dir, args.cache, args.index, args.count, args.part_size)
    if args.child == "stream":
        return child_stream(args.path, args.data_dir, args.cache, args.index, args.count,
                            args.rows, args.batch, args.length)

    sections = set(args.sections.split(","))
    unknown = sections - {"tokenize", "pairs", "hosts", "streams", "padding"}
    if unknown:
        raise SystemExit(f"unknown --sections {sorted(unknown)}")
    if "tokenize" in sections:
        tokenize_section(data, args.length, args.repeats)
    slower = pipeline_sections(data, args.batch, args.length, args.repeats) \
        if "pairs" in sections else float("nan")
    if "hosts" in sections:
        hosts_section(args.hosts_examples, args.part_size)
    if "streams" in sections:
        streams_section(args.streams_examples)
    if "padding" in sections:
        padding_section(data)
    if args.skip_model:
        print(f"data_pipeline: {slower:.1f} ex/s (model not measured)")
        return
    consumed = model_rate(args)
    print(f"data_pipeline: {slower:.1f} ex/s, model consumes {consumed:.2f} ex/s, "
          f"ratio {slower / consumed:.1f}")


if __name__ == "__main__":
    main()
