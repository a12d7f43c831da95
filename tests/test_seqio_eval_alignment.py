"""Multi-host seqio evaluation: hosts whose shards differ in size still yield the same number
of batches (padding batches, ``example_mask`` 0) of the same width, so none waits in a
collective another never enters (``seqio_feed.aligned_batches``). Two hosts are two threads
whose all-gather is a barrier; their shards come from the real seqio Task."""

import threading

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
pytest.importorskip("tensorflow")

from tests.conftest import require_sample  # noqa: E402
from xstilts import seqio_feed  # noqa: E402
from xstilts.data import seqio_tasks as S  # noqa: E402
from xstilts.data import tasks as T  # noqa: E402
from xstilts.data.synthetic import SyntheticWorld  # noqa: E402
from xstilts.tokenization import xlmr_vocabulary  # noqa: E402

NAME, LENGTH, BATCH = "synthetic.nli.en", 64, 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """synthetic.nli.en with a dev split of 9 pairs: shards of 5 and 4, 3 and 2 batches of 2."""
    spm = require_sample("spm/test_model.model")
    root = tmp_path_factory.mktemp("seqio_eval")
    SyntheticWorld(seed=0).write_files(root / "synthetic", {"train": 8, "dev": 9, "test": 4})
    return {"root": root, "spm": spm, "vocab": xlmr_vocabulary(spm)}


@pytest.fixture(autouse=True)
def _registered_here(world):
    S.register_task(T.get_task(NAME), world["root"], world["vocab"])


def _host(index):
    """Host ``index``'s own batches of the dev split (2 shards, widths by length bucket)."""
    return list(b for _, b in S.seqio_batches(
        NAME, sequence_length=LENGTH, batch_size=BATCH, split="dev",
        shard_info=seqio.ShardInfo(index, 2), length_buckets="auto", agree_width=lambda w: w))


def _barrier_gather(hosts):
    """An all-gather across ``hosts`` threads: each waits for every row of the step."""
    rows, barrier = [None] * hosts, threading.Barrier(hosts)

    def gather(row, index):
        rows[index] = row
        barrier.wait(timeout=60)
        out = np.stack(rows)
        barrier.wait(timeout=60)
        return out

    return gather


def _real_rows(batches):
    return sorted(tuple(row[mask == 1]) for b in batches
                  for row, mask, real in zip(b["input_ids"], b["attention_mask"],
                                             b["example_mask"], strict=True) if real)


def test_hosts_with_unequal_shards_get_the_same_batches_count_and_widths(world):
    raw = [_host(0), _host(1)]
    assert [len(r) for r in raw] == [3, 2]  # unaligned, host 1 would leave host 0 waiting
    gather, out, errors = _barrier_gather(2), [None, None], []

    def run(index):
        try:
            out[index] = list(seqio_feed.aligned_batches(
                iter(raw[index]), where=f"{NAME} dev",
                gather=lambda row: gather(row, index)))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and all(o is not None for o in out), errors
    assert [len(o) for o in out] == [3, 3]
    for a, b in zip(*out, strict=True):
        assert a["input_ids"].shape == b["input_ids"].shape  # one width per step
    assert out[1][2]["example_mask"].tolist() == [0, 0]  # host 1's padding batch
    assert (out[1][2]["input_ids"] == S.PAD_ID).all() and (out[1][2]["labels"] == -1).all()
    # every dev example counted exactly once over the hosts, as one host reads them
    alone = [b for _, b in S.seqio_batches(NAME, sequence_length=LENGTH, batch_size=BATCH,
                                           split="dev")]
    assert _real_rows(out[0] + out[1]) == _real_rows(alone)
    assert len(_real_rows(alone)) == 9


def test_seqio_batches_aligns_eval_through_the_gin_factory(world, monkeypatch):
    """``SeqioBatches(split="dev")`` on host 1 of 2: its stream is aligned with host 0's (here
    played by the gather), a train split is not."""
    host0 = _host(0)
    steps = iter([[1, b["input_ids"].shape[-1]] for b in host0] + [[0, 0]])

    def gather(row):
        return np.stack([np.asarray(next(steps), np.int32), row])

    monkeypatch.setattr(seqio_feed, "gather_rows", gather)
    factory = seqio_feed.SeqioBatches(NAME, {"inputs": LENGTH}, data_dir=str(world["root"]),
                                      vocabulary=str(world["spm"]), split="dev",
                                      length_buckets="auto")
    factory.model()
    S.register_task(T.get_task(NAME), world["root"], world["vocab"])  # the 9-pair dev split
    batches = list(factory(shard_index=1, num_shards=2, batch_size=BATCH, start_batch=0))
    assert len(batches) == 3 and batches[2]["example_mask"].sum() == 0
    host1 = _host(1)
    widths = [[b["input_ids"].shape[-1] for b in host] for host in (host0, host1)]
    # the step's width is the widest real batch's; the padding batch takes host 0's
    assert [b["input_ids"].shape[-1] for b in batches] == \
        [max(a, b) for a, b in zip(widths[0][:2], widths[1], strict=True)] + [widths[0][2]]


def test_an_empty_shard_beside_a_full_one_is_a_clear_error():
    def gather(row):
        return np.stack([np.asarray([1, 8], np.int32), row])

    with pytest.raises(ValueError, match=r"t dev: this host's shard has no examples"):
        list(seqio_feed.aligned_batches(iter([]), where="t dev", gather=gather))
