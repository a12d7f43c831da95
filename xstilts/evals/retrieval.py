"""Zero-shot sentence retrieval: embeddings, BUCC bitext mining and Tatoeba, as XTREME does them.

* ``sentence_embeddings``: hidden state ``layer`` of the encoder (0 = embedding output; jiant and
  XTREME use 14 of XLM-R Large), mean-pooled over the attention mask *including* ``<s>``/``</s>``.
* BUCC (google-research/xtreme ``third_party/utils_retrieve.py``): sentences are unified by text,
  L2-normalised, k=4 neighbours both ways (``knn.knn``, one pass), ratio margin, "max" retrieval
  (forward and backward best candidates pooled, accepted greedily one-to-one, score > 0); pairs
  with a sentence that occurs more than once in its corpus are dropped (its id is ambiguous,
  XTREME ``read_sent2id``); duplicate id pairs keep their best score. The threshold is tuned on
  the dev ("sample") gold and applied to test; the oracle F1 tuned on the scored split itself
  (what jiant reports) is given separately and labelled so.
* Tatoeba: cosine 1-NN with the **English sentences as queries against the non-English index**,
  no margin, accuracy. This is what both XTREME (``similarity_search(x=non-English, y=English)``
  puts x in a faiss index and searches it with y) and jiant (``TatoebaEvaluationScheme``) do
  (google-research/xtreme ``third_party/evaluate_retrieval.py``; nyu-mll/jiant
  ``jiant/tasks/evaluate/core.py``); prediction ``i`` is the row of the
  non-English sentence retrieved for English sentence ``i``.
* ``center`` (optional, not part of XTREME's protocol): subtract each language's mean embedding
  before either search. Mean-pooled multilingual encoders carry a language-specific offset that
  dominates cosine similarity across languages; removing it makes them markedly more language
  neutral (Libovický et al., 2020, "On the Language Neutrality of Pre-trained Multilingual
  Representations"). It uses no labels: each side is centred on the sentences being searched.

Command line, over saved embeddings (``.npy``, one row per sentence)::

    python -m xstilts.evals.retrieval mine --src SRC.npy --trg TRG.npy [--k 4] --out FILE
    python -m xstilts.evals.retrieval tatoeba --src SRC.npy --trg TRG.npy

``mine`` writes ``src_row<TAB>trg_row<TAB>margin`` lines (0-based rows, best first);
``tatoeba`` prints, for each source (English query) row, the row of its nearest target.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xstilts.evals import knn as knn_lib
from xstilts.evals import xtreme_io

# -- sentence embeddings ------------------------------------------------------------------


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """``sum(h * mask) / sum(mask)`` over the length axis (jiant ``MeanPoolerHead``)."""
    mask = attention_mask.astype(hidden.dtype)[..., None]
    return (hidden * mask).sum(axis=1) / mask.sum(axis=1)


def sentence_embeddings(apply_fn: Callable, params, input_ids: np.ndarray,
                        attention_mask: np.ndarray, *, layer: int, num_layers: int,
                        batch_size: int = 32) -> np.ndarray:
    """Mean-pooled hidden state ``layer`` (0 = embeddings, ``num_layers`` = last) of each row.

    ``apply_fn({'params': params}, ids, mask, output_hidden_states=True)`` must return
    ``(last, hidden_states)`` as ``XLMRModel.apply`` does. Returns float32 ``[N, hidden]``.
    """
    input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {input_ids.shape} and attention_mask "
                         f"{attention_mask.shape} must be the same [N, L] shape")
    if not 0 <= layer <= num_layers:
        raise ValueError(f"layer {layer} out of range: hidden states are 0 (embeddings) .. "
                         f"{num_layers}")
    empty = np.flatnonzero(attention_mask.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"row {int(empty[0])} has an all-zero attention mask")

    @jax.jit
    def embed(params, ids, mask):
        _, hidden = apply_fn({"params": params}, ids, mask, output_hidden_states=True)
        return mean_pool(hidden[layer].astype(jnp.float32), mask)

    n = input_ids.shape[0]
    out = []
    for start in range(0, n, batch_size):
        ids, mask = input_ids[start: start + batch_size], attention_mask[start: start + batch_size]
        rows = ids.shape[0]
        if rows < batch_size:  # pad the last batch (one unmasked token keeps the mean finite)
            ids = np.concatenate([ids, np.repeat(ids[:1], batch_size - rows, axis=0)])
            mask = np.concatenate([mask, np.repeat(mask[:1], batch_size - rows, axis=0)])
        out.append(np.asarray(embed(params, ids, mask))[:rows])
    return np.concatenate(out).astype(np.float32)


def char_ngram_embeddings(sentences: Sequence[str], dim: int = 1024,
                          ngrams: Sequence[int] = (2, 3, 4)) -> np.ndarray:
    """A deterministic baseline encoder: hashed character n-gram counts, sqrt-scaled, unit norm.

    Sentences are lower-cased and padded with one space on each side. The hash is a fixed
    polynomial over code points (no Python ``hash`` salt), so results are the same everywhere.
    """
    if not sentences:
        raise ValueError("no sentences to embed")
    texts = [f" {s.lower()} " for s in sentences]
    lengths = np.array([len(t) for t in texts])
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    sentence_of = np.repeat(np.arange(len(texts)), lengths)
    counts = np.zeros(len(texts) * dim, np.float64)
    for n in ngrams:
        if codes.size < n:
            continue
        windows = codes.size - n + 1
        h = np.full(windows, n, np.uint64)
        for j in range(n):
            h = h * np.uint64(1_000_003) + codes[j: j + windows]
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
        inside = sentence_of[: windows] == sentence_of[n - 1:]
        bucket = (h[inside] % np.uint64(dim)).astype(np.int64)
        counts += np.bincount(sentence_of[: windows][inside] * dim + bucket,
                              minlength=counts.size)
    return knn_lib.l2_normalize(np.sqrt(counts).reshape(len(texts), dim))


# -- BUCC ---------------------------------------------------------------------------------


def read_bucc_sentences(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``id<TAB>sentence`` lines -> (ids, sentences)."""
    ids, sentences = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[0]:
                raise ValueError(f"{path}:{number}: expected 'id<TAB>sentence', got {line!r:.80}")
            ids.append(parts[0])
            sentences.append(parts[1].strip())
    if not ids:
        raise ValueError(f"{path}: empty file")
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(f"{path}: sentence id {dup!r} occurs more than once")
    return ids, sentences


def read_bucc_gold(path: str | os.PathLike) -> set[tuple[str, str]]:
    """``src_id<TAB>trg_id`` lines -> a set of pairs."""
    pairs = set()
    for number, line in enumerate(xtreme_io.read_lines(path), 1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'src_id<TAB>trg_id', got {line!r:.80}")
        pairs.add((parts[0], parts[1]))
    return pairs


def mine_max(nb: knn_lib.Neighbours, threshold: float = 0.0) -> list[tuple[int, int, float]]:
    """XTREME ``mine_bitext(mode='mine', retrieval='max', margin='ratio')`` on neighbour lists.

    Each source row's and each target row's best candidate by margin are pooled, sorted by
    score (stable sort: XTREME's quicksort leaves tie order unspecified) and accepted when
    neither side was taken before; accepted pairs with ``score > threshold`` are returned.
    """
    fwd, bwd = knn_lib.ratio_margins(nb)
    fwd_arg, bwd_arg = fwd.argmax(axis=1), bwd.argmax(axis=1)
    n, m = fwd.shape[0], bwd.shape[0]
    src = np.concatenate([np.arange(n), nb.idx_yx[np.arange(m), bwd_arg]])
    trg = np.concatenate([nb.idx_xy[np.arange(n), fwd_arg], np.arange(m)])
    scores = np.concatenate([fwd[np.arange(n), fwd_arg], bwd[np.arange(m), bwd_arg]])
    seen_src, seen_trg = np.zeros(n, bool), np.zeros(m, bool)
    mined = []
    for i in np.argsort(-scores, kind="stable"):
        s, t = src[i], trg[i]
        if not seen_src[s] and not seen_trg[t]:
            seen_src[s] = seen_trg[t] = True
            if scores[i] > threshold:
                mined.append((int(s), int(t), float(scores[i])))
    return mined


def bucc_candidates(src_ids: Sequence[str], src_sentences: Sequence[str], src_emb: np.ndarray,
                    trg_ids: Sequence[str], trg_sentences: Sequence[str], trg_emb: np.ndarray,
                    *, k: int = 4, **knn_kwargs) -> dict[tuple[str, str], float]:
    """Mined candidate id pairs with their margin scores (XTREME ``mine_bitext`` followed by
    ``read_candidate2score``)."""
    for name, ids, sents, emb in (("source", src_ids, src_sentences, src_emb),
                                  ("target", trg_ids, trg_sentences, trg_emb)):
        if not (len(ids) == len(sents) == len(emb)):
            raise ValueError(f"BUCC {name}: {len(ids)} ids, {len(sents)} sentences and "
                             f"{len(emb)} embeddings; expected one of each per sentence")
    src_unique, src_rows = _unify(src_sentences)
    trg_unique, trg_rows = _unify(trg_sentences)
    x = knn_lib.l2_normalize(np.asarray(src_emb)[src_rows])
    y = knn_lib.l2_normalize(np.asarray(trg_emb)[trg_rows])
    nb = knn_lib.knn(x, y, k, both=True, **knn_kwargs)
    src_id, trg_id = _unique_ids(src_ids, src_sentences), _unique_ids(trg_ids, trg_sentences)
    candidates: dict[tuple[str, str], float] = {}
    for s, t, score in mine_max(nb):
        s_text, t_text = src_unique[s], trg_unique[t]
        if s_text in src_id and t_text in trg_id:
            pair = (src_id[s_text], trg_id[t_text])
            candidates[pair] = max(score, candidates.get(pair, score))
    return candidates


def _unify(sentences: Sequence[str]) -> tuple[list[str], list[int]]:
    """Unique sentences (first occurrence order) and the row of each one's first occurrence."""
    first: dict[str, int] = {}
    for row, sentence in enumerate(sentences):
        first.setdefault(sentence, row)
    return list(first), list(first.values())


def _unique_ids(ids: Sequence[str], sentences: Sequence[str]) -> dict[str, str]:
    """Sentence -> id, without sentences that occur more than once (XTREME ``read_sent2id``)."""
    counts = Counter(sentences)
    return {s: i for i, s in zip(ids, sentences, strict=True) if counts[s] == 1}


@dataclasses.dataclass(frozen=True)
class BuccScore:
    threshold: float
    precision: float  # x100
    recall: float
    f1: float


def bucc_prf(predicted: set[tuple[str, str]], gold: set[tuple[str, str]]) -> tuple[float, ...]:
    correct = len(predicted & gold)
    if correct == 0:
        return 0.0, 0.0, 0.0
    precision, recall = correct / len(predicted), correct / len(gold)
    return 100 * precision, 100 * recall, 100 * 2 * precision * recall / (precision + recall)


def bucc_extract(candidates: Mapping[tuple[str, str], float],
                 threshold: float) -> set[tuple[str, str]]:
    """Pairs with ``score >= threshold`` (XTREME ``bucc_extract``)."""
    return {pair for pair, score in candidates.items() if score >= threshold}


def bucc_optimize(candidates: Mapping[tuple[str, str], float],
                  gold: set[tuple[str, str]]) -> BuccScore:
    """The threshold of best F1 against ``gold`` (XTREME ``bucc_optimize``), with two fixes.

    As XTREME: candidates by descending score, F1 of each prefix, threshold = midpoint between
    the best prefix's last score and the next score. Unlike XTREME: (1) a prefix may only end
    where the score drops, because ``bucc_extract`` cannot split candidates of equal score (XTREME
    could pick a cut inside a tie and then extract the whole tie); (2) when the best prefix is
    all candidates, the threshold is the last score (XTREME reads past the end of the list and
    raises IndexError). No correct candidate at all: threshold 0, as XTREME.
    """
    if not gold:
        raise ValueError("BUCC gold is empty")
    items = sorted(candidates.items(), key=lambda item: -item[1])
    best = BuccScore(0.0, 0.0, 0.0, 0.0)
    correct = 0
    for i, (pair, score) in enumerate(items):
        correct += pair in gold
        last = i + 1 == len(items)
        if correct == 0 or (not last and items[i + 1][1] == score):
            continue
        precision, recall = correct / (i + 1), correct / len(gold)
        f1 = 2 * precision * recall / (precision + recall)
        if f1 > best.f1 / 100:
            threshold = score if last else (score + items[i + 1][1]) / 2
            best = BuccScore(threshold, 100 * precision, 100 * recall, 100 * f1)
    return best


def bucc_score(candidates: Mapping[tuple[str, str], float], gold: set[tuple[str, str]],
               threshold: float) -> BuccScore:
    return BuccScore(threshold, *bucc_prf(bucc_extract(candidates, threshold), gold))


def bucc_evaluate(dev_candidates: Mapping[tuple[str, str], float], dev_gold: set[tuple[str, str]],
                  test_candidates: Mapping[tuple[str, str], float],
                  test_gold: set[tuple[str, str]] | None = None) -> dict:
    """Threshold tuned on dev gold, applied to test (XTREME's protocol).

    Returns ``threshold``, ``dev`` (scores at that threshold), ``test_predictions`` and, when
    ``test_gold`` is given, ``test`` and ``test_oracle`` (threshold tuned on the test gold itself,
    which is what jiant reports; an upper bound, not a result).
    """
    tuned = bucc_optimize(dev_candidates, dev_gold)
    out = {"threshold": tuned.threshold, "dev": dataclasses.asdict(tuned),
           "test_predictions": sorted(bucc_extract(test_candidates, tuned.threshold))}
    if test_gold is not None:
        out["test"] = dataclasses.asdict(bucc_score(test_candidates, test_gold, tuned.threshold))
        out["test_oracle"] = dataclasses.asdict(bucc_optimize(test_candidates, test_gold))
    return out


def center(embeddings: np.ndarray) -> np.ndarray:
    """``embeddings`` minus their mean row (one language's sentences; see the module docstring)."""
    x = np.asarray(embeddings, np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"center: expected a non-empty [rows, dim] array, got {x.shape}")
    return x - x.mean(axis=0, keepdims=True)


# -- Tatoeba ------------------------------------------------------------------------------


def tatoeba_predict(english: np.ndarray, other: np.ndarray, **knn_kwargs) -> np.ndarray:
    """For each English sentence, the row of the nearest non-English sentence (cosine)."""
    nb = knn_lib.knn(knn_lib.l2_normalize(english), knn_lib.l2_normalize(other), 1, both=False,
                     **knn_kwargs)
    return nb.idx_xy[:, 0]


def tatoeba_accuracy(predictions: Sequence[int], gold: Sequence[int]) -> float:
    """Share (x100) of English queries that retrieved their own translation."""
    if len(predictions) != len(gold):
        raise ValueError(f"Tatoeba: {len(predictions)} predictions for {len(gold)} sentences")
    if not len(gold):
        raise ValueError("Tatoeba: no sentences")
    return 100.0 * float(np.mean(np.asarray(predictions) == np.asarray(gold)))


# -- command line -------------------------------------------------------------------------


def _load(path: str) -> np.ndarray:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a .npy array ({e})") from None
    if a.ndim != 2 or a.shape[0] == 0 or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{path}: expected a non-empty float [rows, dim] array, got "
                         f"{a.dtype} {a.shape}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xstilts.evals.retrieval",
                                     description="Exact retrieval over saved embeddings.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("mine", "BUCC-style margin mining (XTREME 'max' retrieval)"),
                            ("tatoeba", "nearest target row for each source row (cosine)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--src", required=True, help="[N, d] .npy (Tatoeba: English queries)")
        p.add_argument("--trg", required=True, help="[M, d] .npy (Tatoeba: non-English index)")
        p.add_argument("--block-size", type=int, default=2048)
        p.add_argument("--center", action="store_true",
                       help="subtract each file's mean row first (language centring)")
        if name == "mine":
            p.add_argument("--k", type=int, default=4, help="neighbourhood of the ratio margin")
            p.add_argument("--out", required=True, help="src_row<TAB>trg_row<TAB>score lines")
    args = parser.parse_args(argv)
    try:
        src, trg = _load(args.src), _load(args.trg)
        if src.shape[1] != trg.shape[1]:
            raise ValueError(f"{args.src} has dimension {src.shape[1]} but {args.trg} has "
                             f"{trg.shape[1]}")
        if args.center:
            src, trg = center(src), center(trg)
        if args.command == "tatoeba":
            for row in tatoeba_predict(src, trg, block_size=args.block_size):
                print(int(row))
            return 0
        nb = knn_lib.knn(knn_lib.l2_normalize(src), knn_lib.l2_normalize(trg), args.k,
                         block_size=args.block_size)
        mined = mine_max(nb)
        xtreme_io.write_lines(args.out, (f"{s}\t{t}\t{score:.9g}" for s, t, score in mined))
        print(f"{len(mined)} pairs written to {args.out}", file=sys.stderr)
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
