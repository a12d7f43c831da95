"""Featurization in parts: each host featurizes its share once, every host gets the same list."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from xstilts.data import pipeline as PL
from xstilts.data.feature_converters import ShardInfo
from xstilts.data.synthetic import SyntheticWorld
from xstilts.tokenization import XLMRTokenizer

KINDS = {  # one task per kind of the synthetic world
    "synthetic.nli.en": "classification",
    "synthetic.ner.en": "tagging",
    "synthetic.qa.en": "qa",
    "synthetic.mlm.en": "mlm",
}
PART = 7  # examples per part: the 40-example train splits make 6 parts
PARTS = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    SyntheticWorld(seed=0).write_files(root / "synthetic",
                                       sizes={"train": 40, "dev": 8, "test": 8})
    return root


@pytest.fixture(scope="module")
def tok():
    from tests.conftest import require_sample

    return XLMRTokenizer(require_sample("spm/test_model.model"))


def _same(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.keys() != y.keys():
            return False
        for key in x:
            if isinstance(x[key], np.ndarray) or isinstance(x[key], list):
                if not all(np.array_equal(p, q) for p, q in
                           zip(np.atleast_1d(x[key]), np.atleast_1d(y[key]), strict=True)):
                    return False
            elif x[key] != y[key]:
                return False
    return True


def _part_size(name, world) -> tuple[int, int]:
    """(examples per part that cut ``name``'s train split into ``PARTS`` parts, examples)."""
    examples = list(PL.sources.read(PL.get_task(name), "train", world))
    return -(-len(examples) // PARTS), len(examples)


def _hosts(name, tok, world, cache, count, part):
    """``count`` hosts (threads) featurizing ``name``'s train split into one shared cache."""
    results, errors = {}, []

    def host(index):
        try:
            stats = {}
            results[index] = (PL.task_features(
                name, "train", tok, data_dir=world, cache_dir=cache, stats=stats,
                shard_info=ShardInfo(index, count), part_size=part), stats)
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=host, args=(i,), name=f"host{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


@pytest.mark.parametrize("name", list(KINDS))
def test_two_hosts_featurize_disjoint_parts_and_agree(name, world, tok, tmp_path, monkeypatch):
    part, size = _part_size(name, world)
    one_host_stats = {}
    one_host = PL.task_features(name, "train", tok, data_dir=world, stats=one_host_stats,
                                part_size=part)
    calls: dict[str, list[int]] = {}
    original = PL._featurize_part

    def recording(spec, examples, *args):
        calls.setdefault(threading.current_thread().name, []).append(examples[0]["id"])
        return original(spec, examples, *args)

    monkeypatch.setattr(PL, "_featurize_part", recording)
    results = _hosts(name, tok, world, tmp_path / "cache", 2, part)
    first_ids = [e["id"] for e in PL.sources.read(PL.get_task(name), "train", world)][::part]
    assert len(first_ids) == PARTS
    # host i featurized parts i, i+2, i+4 and nothing else; no part twice
    assert calls == {"host0": first_ids[0::2], "host1": first_ids[1::2]}
    for features, stats in results.values():
        assert _same(features, one_host), name
        assert stats == one_host_stats and stats["examples"] == size
    assert len(list((tmp_path / "cache").glob("*.part-*-of-00006.pkl"))) == 6
    if KINDS[name] == "mlm":  # rows renumbered over the concatenated parts
        assert [f["example_id"] for f in one_host] == list(range(len(one_host)))

    # a third run (one host) reads the complete cache and featurizes nothing
    calls.clear()
    again = PL.task_features(name, "train", tok, data_dir=world, cache_dir=tmp_path / "cache",
                             part_size=part)
    assert calls == {} and _same(again, one_host)
    stats = PL.cached_stats(name, "train", tok, data_dir=world, cache_dir=tmp_path / "cache")
    assert stats == one_host_stats


def test_parts_do_not_change_per_example_features(world, tok):
    """Cutting a split into parts changes nothing for per-example kinds (MLM packs per part)."""
    for name in ("synthetic.nli.en", "synthetic.ner.en", "synthetic.qa.en"):
        whole = PL.task_features(name, "train", tok, data_dir=world)
        assert _same(PL.task_features(name, "train", tok, data_dir=world, part_size=PART),
                     whole), name


def test_a_missing_peer_is_a_timeout_naming_the_part(world, tok, tmp_path, monkeypatch):
    monkeypatch.setattr(PL, "SHARD_WAIT_SECONDS", 1.0)
    with pytest.raises(TimeoutError, match=r"part-00000-of-00006\.pkl.*shared by every host"):
        PL.task_features("synthetic.nli.en", "train", tok, data_dir=world,
                         cache_dir=tmp_path / "cache", shard_info=ShardInfo(1, 2),
                         part_size=PART)
    # its own parts were written (a relaunch reuses them); nothing half-written
    names = sorted(p.name.rsplit(".part-", 1)[1] for p in (tmp_path / "cache").iterdir())
    assert names == ["00001-of-00006.pkl", "00003-of-00006.pkl", "00005-of-00006.pkl"]
