"""BUCC and Tatoeba straight from the intermediate encoder: sentence embeddings, mining and
scores (jiant's recipe: mean-pooled hidden state, cosine, k=4 ratio margin for BUCC)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from xstilts.data import sources, tasks
from xstilts.evals import retrieval
from xstilts.experiment.grid import SYNTHETIC_BUCC
from xstilts.experiment.rundir import row
from xstilts.experiment.runtime import Runtime

log = logging.getLogger("xstilts.experiment")
LENGTH_BUCKET = 32  # embedding batches pad to a multiple of this (few compiles, little padding)


def bucc_like(parallel: Mapping[str, list], english_pool: Sequence[str], keep: float = 0.7,
              seed: int = 0) -> dict[str, dict[str, list]]:
    """A BUCC-style mining set from parallel pairs: each half (dev / test) keeps the translation
    of a random ``keep`` share of its source sentences and adds as many unrelated English
    sentences, so some source sentences have no partner and the threshold matters."""
    rng = np.random.default_rng(seed)
    pairs = list(zip(parallel["source"], parallel["target"], strict=True))
    half = len(pairs) // 2
    used = {text for _, (_, text) in pairs}
    pool = [s for s in dict.fromkeys(english_pool) if s not in used]
    out = {}
    for split, chunk in (("dev", pairs[:half]), ("test", pairs[half:])):
        source = [(f"{split}-s{i}", text) for i, ((_, text), _) in enumerate(chunk)]
        target, gold = [], []
        for i, (_, (_, text)) in enumerate(chunk):
            if rng.random() < keep:
                target.append((f"{split}-t{i}", text))
                gold.append((f"{split}-s{i}", f"{split}-t{i}"))
        missing = len(chunk) - len(gold)
        target += [(f"{split}-d{j}", pool.pop()) for j in range(missing) if pool]
        out[split] = {"source": source, "target": target, "gold": gold}
    return out


def retrieval_metric(name: str) -> str:
    """The metric (``evals.metrics.METRICS`` name) of a retrieval task of the grid."""
    if name == SYNTHETIC_BUCC:
        return "bucc_f1"
    specs = tasks.tasks_for(name)
    if not specs:
        raise ValueError(f"retrieval task {name!r}: no registered tasks of that dataset")
    return specs[0].metric


def task_length(name: str) -> int:
    """The retrieval task's own max length (512 for BUCC and Tatoeba)."""
    return tasks.tasks_for("synthetic.parallel" if name == SYNTHETIC_BUCC else name)[0].max_length


def retrieval_sets(name: str, data_dir: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(language, {"kind", "length", "dev", "test"}) where dev/test hold source/target/gold."""
    if name == SYNTHETIC_BUCC:
        english = [e["text"] for e in sources.read(tasks.get_task("synthetic.mlm.en"), "train",
                                                   data_dir)]
        for spec in tasks.tasks_for("synthetic.parallel"):
            full = tasks.load_retrieval(spec.name, "test", data_dir)
            yield spec.language, {"kind": "bucc", "length": spec.max_length,
                                  **bucc_like(full, english)}
        return
    for spec in tasks.tasks_for(name):
        sets = {"length": spec.max_length,
                "test": tasks.load_retrieval(spec.name, "test", data_dir)}
        if spec.metric == "bucc_f1":
            sets.update(kind="bucc", dev=tasks.load_retrieval(spec.name, "dev", data_dir))
            if not sets["dev"]["gold"]:
                raise ValueError(f"{spec.name}: the dev split has no gold pairs (data_dir "
                                 f"{data_dir}); BUCC's threshold is tuned on them")
        else:
            sets["kind"] = "tatoeba"
        yield spec.language, sets


def retrieval_layer(rt: Runtime) -> int:
    """The grid's hidden state, else 14 of 24 scaled to the model's depth (jiant)."""
    if rt.grid.retrieval_layer is not None:
        return rt.grid.retrieval_layer
    return max(1, round(rt.model_config.num_hidden_layers * 14 / 24))


def retrieval_length(rt: Runtime, task_length: int) -> int:
    """The task's length (512 for BUCC and Tatoeba), or the grid's, within the model's."""
    return min(rt.grid.retrieval_length or task_length, rt.model_config.max_length)


class Embedder:
    """Sentence embeddings of one encoder with one jitted function for every call."""

    def __init__(self, rt: Runtime, encoder: Any) -> None:
        self.rt, self.encoder = rt, encoder
        self.fn = rt.predictor.embed_fn(retrieval_layer(rt))

    def __call__(self, sentences: Sequence[str], max_length: int) -> np.ndarray:
        tok, batch_size = self.rt.inputs.tokenizer, self.rt.grid.eval_batch_size
        ids = [tok.encode(s, max_length=max_length) for s in sentences]
        out = []
        with self.rt.partitioner.context():
            for start in range(0, len(ids), batch_size):
                chunk = ids[start:start + batch_size]
                width = min(max_length, -(-max(map(len, chunk)) // LENGTH_BUCKET) * LENGTH_BUCKET)
                padded = np.full((batch_size, width), tok.pad_id, np.int32)
                for r, seq in enumerate(chunk):
                    padded[r, :len(seq)] = seq
                padded[len(chunk):, :2] = (tok.bos_id, tok.eos_id)
                mask = (padded != tok.pad_id).astype(np.int32)
                out.append(np.asarray(self.fn(self.encoder, padded, mask))[:len(chunk)])
        vectors = np.concatenate(out).astype(np.float32)
        # Each call embeds one language's side of one set: centring it here is per language.
        return retrieval.center(vectors) if self.rt.grid.retrieval_center else vectors


def _tatoeba_rows(embed: Embedder, sets: Mapping[str, Any], length: int, head: tuple
                  ) -> list[dict[str, Any]]:
    test = sets["test"]
    other = embed([t for _, t in test["source"]], length)
    english = embed([t for _, t in test["target"]], length)
    predicted = retrieval.tatoeba_predict(english, other, **_knn_mesh())
    value = retrieval.tatoeba_accuracy(predicted, np.arange(len(predicted)))
    return [row(*head[:3], "test", "accuracy", value, *head[3:])]


def _bucc_rows(embed: Embedder, sets: Mapping[str, Any], length: int, head: tuple
               ) -> list[dict[str, Any]]:
    candidates = {}
    for split in ("dev", "test"):
        src_ids, src = zip(*sets[split]["source"], strict=True)
        trg_ids, trg = zip(*sets[split]["target"], strict=True)
        candidates[split] = retrieval.bucc_candidates(
            list(map(str, src_ids)), list(src), embed(src, length),
            list(map(str, trg_ids)), list(trg), embed(trg, length), **_knn_mesh())
    gold = {split: {(str(a), str(b)) for a, b in sets[split]["gold"]} for split in ("dev", "test")}
    out = retrieval.bucc_evaluate(candidates["dev"], gold["dev"], candidates["test"],
                                  gold["test"] or None)
    if "test" not in out:  # BUCC's test gold is withheld: no row, the report marks it missing
        log.warning("%s %s: the test split has no gold pairs; its cell stays missing (the "
                    "report shows the task as incomplete)", head[1], head[2])
        return []
    return [row(*head[:3], "test", m, out["test"][m], *head[3:])
            for m in ("f1", "precision", "recall")]


def _knn_mesh() -> dict[str, Any]:
    # The nearest-neighbour search runs on this process's devices: every process mines the
    # same (replicated) embeddings, so a global mesh would only add cross-host traffic.
    if jax.process_count() == 1:
        return {}
    return {"mesh": jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))}


def retrieval_rows(rt: Runtime, config: str, encoder_from: str | None, seed: int
                   ) -> list[dict[str, Any]]:
    """BUCC and Tatoeba scores of one intermediate encoder (no test row: gold withheld)."""
    if not rt.grid.retrieval:
        return []
    encoder, step = rt.predictor.encoder_params(encoder_from, rt.grid.pretrained)
    embed = Embedder(rt, encoder)
    rows = []
    for name in rt.grid.retrieval:
        for lang, sets in retrieval_sets(name, rt.grid.data_dir):
            length = retrieval_length(rt, sets["length"])
            score = _tatoeba_rows if sets["kind"] == "tatoeba" else _bucc_rows
            rows += score(embed, sets, length, (config, name, lang, seed, step))
    return rows


def chance_rows(rt: Runtime, chance: str) -> list[dict[str, Any]]:
    """Chance level of each retrieval language: 1/N Tatoeba accuracy, 0 BUCC F1."""
    rows = []
    for name in rt.grid.retrieval:
        for lang, sets in retrieval_sets(name, rt.grid.data_dir):
            tatoeba = sets["kind"] == "tatoeba"
            value = 100.0 / len(sets["test"]["target"]) if tatoeba else 0.0
            rows.append(row(chance, name, lang, "test", "accuracy" if tatoeba else "f1", value,
                            0, 0))
    return rows
