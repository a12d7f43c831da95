"""Translation throughput: our jit-compiled beam search (``xstilts.decoding``) against Hugging Face
PyTorch ``generate()`` on the same checkpoint, same beams, same sentences, each in its own process.

The checkpoint is a random base-like M2M100 (``--d_model 512``, 6+6 layers, 8 heads, FFN 2048,
32k vocabulary; the released models cannot be downloaded here) saved with ``save_pretrained``;
the sentences are the first ``--sentences`` English Tatoeba lines of ``../shared/data``,
tokenized by ``NMTTokenizer`` (the shared 1000-piece SentencePiece test model with NLLB's
language codes). Both systems decode the same id batches (``--batch`` rows, length-sorted, beams
``--beams``, ``max_length`` ``--max_length``, forced target-language BOS); one untimed pass first
(model load, compilation, warm-up), then a timed pass: the model loaded again, then every batch
decoded, each timed. Printed: sentences/s of each, decoding alone (what ``xstilts.translate``
pays per sentence: it loads the model once per run) and with the load (the figure of earlier
versions of this script), both ratios, and how many outputs are token for token the same.
CTranslate2 (``pip install ctranslate2``, the ``bench`` extra) is timed the same way, converted
from the same checkpoint by its ``TransformersConverter`` (on the untimed load), same beams and
maximum length (its ``max_decoding_length`` counts the forced language token and ``</s>`` as
HF's ``max_length`` does, less the decoder start).
Every system runs ``--rounds`` times (default 3), each round in a new process and in another
order, and the ratios are of the medians (the machine is shared: a single run drifted from 0.77x
to 1.10x); every run's outputs must be the same tokens. The load average is printed at the
start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from child_process import QUIET, run_child  # benchmarks/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("ours", "torch", "ctranslate2")


def _batches(args) -> list[tuple[np.ndarray, np.ndarray]]:
    ids = np.load(Path(args.workdir) / "ids.npy", allow_pickle=True)
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = []
    for start in range(0, len(order), args.batch):
        rows = [ids[i] for i in order[start:start + args.batch]]
        width = -(-max(len(r) for r in rows) // 16) * 16
        batch = np.ones((len(rows), width), np.int32)
        for r, row in enumerate(rows):
            batch[r, :len(row)] = row
        out.append((batch, (batch != 1).astype(np.int32)))
    return out


def load_ours(args):
    sys.path.insert(0, str(ROOT))
    from xstilts.models.nmt_convert import load_nmt_checkpoint

    return load_nmt_checkpoint(Path(args.workdir) / "model")


def run_ours(args, model, batches, target: int) -> list[np.ndarray]:
    from xstilts.decoding import DecodeSettings, generate

    config, params = model
    settings = DecodeSettings(num_beams=args.beams, max_length=args.max_length)
    return [generate(config, params, ids, mask, target, settings)[0] for ids, mask in batches]


def load_torch(args):
    import torch
    from transformers import M2M100ForConditionalGeneration

    torch.set_num_threads(os.cpu_count() or 2)
    return M2M100ForConditionalGeneration.from_pretrained(Path(args.workdir) / "model").eval()


def run_torch(args, model, batches, target: int) -> list[np.ndarray]:
    import torch

    out = []
    with torch.inference_mode():
        for ids, mask in batches:
            out.append(model.generate(
                input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long), num_beams=args.beams,
                max_length=args.max_length, forced_bos_token_id=target,
                do_sample=False).numpy())
    return out


def load_ctranslate2(args):
    """CTranslate2's model, converted from the same checkpoint (on the first, untimed load)."""
    import ctranslate2

    folder = Path(args.workdir) / "ct2"
    if not folder.exists():
        ctranslate2.converters.TransformersConverter(str(Path(args.workdir) / "model")).convert(
            str(folder))
    vocab = json.loads((folder / "shared_vocabulary.json").read_text(encoding="utf-8"))
    translator = ctranslate2.Translator(str(folder), device="cpu",
                                        intra_threads=os.cpu_count() or 2)
    return translator, vocab


def run_ctranslate2(args, model, batches, target: int) -> list[np.ndarray]:
    """CTranslate2 on the same ids: its tokens are strings of its vocabulary file, which lists
    the tokenizer's tokens by id (then ``madeupwordN`` up to the model's vocabulary size), so ids
    map to tokens and back by position."""
    translator, vocab = model
    index = {token: i for i, token in enumerate(vocab)}
    if len(index) != len(vocab):
        raise ValueError("shared_vocabulary.json: repeated tokens; ids are ambiguous")
    out = []
    for ids, mask in batches:
        tokens = [[vocab[t] for t in row[m.astype(bool)]] for row, m in zip(ids, mask, strict=True)]
        results = translator.translate_batch(  # the prefix and </s> count, as in HF max_length
            tokens, target_prefix=[[vocab[target]]] * len(tokens), beam_size=args.beams,
            max_decoding_length=args.max_length - 1, return_end_token=True)
        rows = [[2] + [index[t] for t in r.hypotheses[0]] for r in results]
        width = max(map(len, rows))
        out.append(np.array([r + [1] * (width - len(r)) for r in rows]))
    return out


def _child(args) -> None:
    batches = _batches(args)
    target = json.loads((Path(args.workdir) / "meta.json").read_text())["target"]
    load, run = {"ours": (load_ours, run_ours), "torch": (load_torch, run_torch),
                 "ctranslate2": (load_ctranslate2, run_ctranslate2)}[args.child]
    run(args, load(args), batches, target)  # load, compile, warm up
    start = time.perf_counter()
    model = load(args)
    loaded = time.perf_counter()
    outputs = run(args, model, batches, target)
    end = time.perf_counter()
    rows = [row.tolist() for out in outputs for row in out]
    print("RESULT " + json.dumps({"seconds": end - loaded, "load_seconds": loaded - start,
                                  "rows": rows}))


def _spawn(system: str, args, timeout: float) -> dict | None:
    argv = ["--workdir", args.workdir, "--batch", str(args.batch), "--beams", str(args.beams),
            "--max_length", str(args.max_length)]
    return run_child(__file__, system, argv, timeout, env={**os.environ, **QUIET,
                                                           "JAX_PLATFORMS": "cpu"})


def _prepare(args) -> None:
    import torch
    import transformers

    sys.path.insert(0, str(ROOT))
    from tests.conftest import require_sample
    from xstilts.models.nmt_tokenizer import NMTTokenizer

    work = Path(args.workdir)
    tok = transformers.NllbTokenizer(vocab_file=str(require_sample("spm") / "test_model.model"))
    tok.save_pretrained(work / "model")
    torch.manual_seed(0)
    config = transformers.M2M100Config(
        vocab_size=args.vocab, d_model=args.d_model, encoder_layers=args.layers,
        decoder_layers=args.layers, encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads, encoder_ffn_dim=4 * args.d_model,
        decoder_ffn_dim=4 * args.d_model, max_position_embeddings=1024)
    transformers.M2M100ForConditionalGeneration(config).save_pretrained(work / "model")
    ours = NMTTokenizer.from_pretrained(work / "model")
    lines = (require_sample("tatoeba/v1") / "tatoeba.deu-eng.eng").read_text().splitlines()
    ids = np.empty(args.sentences, dtype=object)
    for i, line in enumerate(lines[:args.sentences]):
        ids[i] = np.array(ours.encode_source(line, "eng_Latn", 128), np.int32)
    np.save(work / "ids.npy", ids, allow_pickle=True)
    (work / "meta.json").write_text(json.dumps({"target": ours.lang_id("yor_Latn")}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=SYSTEMS)
    p.add_argument("--workdir")
    p.add_argument("--sentences", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--max_length", type=int, default=48)
    p.add_argument("--d_model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--rounds", type=int, default=3,
                   help="runs of every system, alternating their order; medians are compared")
    p.add_argument("--timeout", type=float, default=1200)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory() as work:
        args.workdir = work
        _prepare(args)
        os.sync()  # the checkpoint just written is flushed before anything is timed
        print(f"translate: {args.sentences} sentences, batch {args.batch}, {args.beams} beams, "
              f"max_length {args.max_length}, d_model {args.d_model}, {args.layers}+{args.layers} "
              f"layers, vocab {args.vocab}, {os.cpu_count()} CPUs, {args.rounds} round(s), "
              f"load average {_load()}")
        systems = list(SYSTEMS)
        try:
            import ctranslate2  # noqa: F401
        except ImportError:
            print("  ctranslate2: not installed (pip install ctranslate2), skipped")
            systems.remove("ctranslate2")
        runs: dict[str, list[dict]] = {name: [] for name in systems}
        for round_ in range(args.rounds):  # each round in another order (a shared machine)
            order = systems[round_ % len(systems):] + systems[:round_ % len(systems)]
            for system in order:
                result = _spawn(system, args, args.timeout)
                if result is None:
                    continue
                runs[system].append(result)
                total = result["seconds"] + result["load_seconds"]
                print(f"  round {round_} {system}: {args.sentences / result['seconds']:.2f} "
                      f"sentences/s decoding ({result['seconds']:.2f} s); with the model load "
                      f"{args.sentences / total:.2f} ({result['load_seconds']:.2f} s + decoding)")
        results = {name: _median_run(r) for name, r in runs.items() if r}
        for name, result in results.items():
            per_round = ", ".join(f"{r['seconds']:.2f}" for r in runs[name])
            print(f"  {name}: {args.sentences / result['seconds']:.2f} sentences/s decoding, "
                  f"median of {len(runs[name])} ({result['seconds']:.2f} s; per round "
                  f"{per_round} s)")
        for peer, name in (("torch", "torch generate()"), ("ctranslate2", "CTranslate2")):
            if "ours" in results and peer in results:
                ours, theirs = results["ours"], results[peer]
                same = min(_same_rows(o["rows"], t["rows"])
                           for o in runs["ours"] for t in runs[peer])
                ratio = theirs["seconds"] / ours["seconds"]
                with_load = theirs["with_load"] / ours["with_load"]
                print(f"translate: ours / {name} = {ratio:.2f}x sentences/s decoding "
                      f"({with_load:.2f}x with the model load; medians); "
                      f"{same}/{args.sentences} outputs token for token the same")
        print(f"translate: load average {_load()} at the end (1/5/15 min; "
              f"{os.cpu_count()} CPUs: a load above that means a busy machine)")


def _median_run(runs: list[dict]) -> dict:
    """Median decoding and load+decoding seconds over a system's rounds, and its rows."""
    return {"seconds": float(np.median([r["seconds"] for r in runs])),
            "with_load": float(np.median([r["seconds"] + r["load_seconds"] for r in runs])),
            "rows": runs[0]["rows"]}


def _same_rows(ours: list[list[int]], theirs: list[list[int]]) -> int:
    """Rows equal up to trailing padding (each system pads its batch to its own width)."""
    def strip(row: list[int]) -> list[int]:
        while row and row[-1] == 1:
            row = row[:-1]
        return row
    return sum(strip(a) == strip(b) for a, b in zip(ours, theirs, strict=True))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())

if __name__ == "__main__":
    main()
