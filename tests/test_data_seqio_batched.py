"""The batched route of seqio_batches (xstilts/data/seqio_batched.py) gives exactly the batches
of seqio's own route (Task.get_dataset + the converter): shuffled or not, sharded, bucketed,
across epochs; and only the project's classification Tasks read from files take it."""

import itertools

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

from tests.conftest import require_sample  # noqa: E402
from xstilts.data import seqio_tasks as S  # noqa: E402
from xstilts.data import tasks as T  # noqa: E402
from xstilts.data.synthetic import SyntheticWorld  # noqa: E402
from xstilts.tokenization import xlmr_vocabulary  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """synthetic.nli.en (150 train pairs) and the real XNLI German dev sample, registered."""
    spm = require_sample("spm/test_model.model")
    xnli = require_sample("xnli")
    root = tmp_path_factory.mktemp("seqio_batched")
    (root / "xnli").symlink_to(xnli)  # read in place, never copied
    SyntheticWorld(seed=0).write_files(root / "synthetic", {"train": 150, "dev": 6, "test": 6})
    vocab = xlmr_vocabulary(spm)
    for name in ("synthetic.nli.en", "xnli.de"):
        S.register_task(T.get_task(name), root, vocab, allow_samples=True)
    return {"root": root, "vocab": vocab}


@pytest.fixture(autouse=True)
def _registered_here(world):
    """Other modules' tests may register the same names on another data dir in between."""
    for name in ("synthetic.nli.en", "xnli.de"):
        S.register_task(T.get_task(name), world["root"], world["vocab"], allow_samples=True)


def _both(name, steps, **options):
    routes = [list(itertools.islice(
        (b for _, b in S.seqio_batches(name, batched=batched, **options)), steps))
        for batched in (True, False)]
    assert len(routes[0]) == len(routes[1]) == steps
    return routes


# (task, split, length, batch size, shard, buckets, shuffle, epochs, steps)
CASES = [
    ("synthetic.nli.en", "train", 32, 8, None, None, True, None, 45),  # > 2 epochs, shuffled
    ("synthetic.nli.en", "train", 64, 8, (1, 2), "auto", True, None, 20),  # a shard, buckets
    ("xnli.de", "dev", 24, 16, None, None, False, 1, 4),  # real pairs cut longest-first
    ("xnli.de", "dev", 256, 7, (0, 3), "auto", True, 2, 6),  # odd batch, 3 shards, 2 epochs
]


@pytest.mark.parametrize("name,split,length,batch,shard,buckets,shuffle,epochs,steps", CASES)
def test_the_batched_route_gives_seqio_s_batches(world, name, split, length, batch, shard,
                                                 buckets, shuffle, epochs, steps):
    shard_info = seqio.ShardInfo(*shard) if shard else None
    fast, seqio_route = _both(name, steps, sequence_length=length, batch_size=batch,
                              split=split, shard_info=shard_info, seed=5, shuffle=shuffle,
                              num_epochs=epochs, length_buckets=buckets,
                              agree_width=(lambda w: w) if buckets and shard else None)
    widths = set()
    for step, (a, b) in enumerate(zip(fast, seqio_route, strict=True)):
        assert sorted(a) == sorted(b) == ["attention_mask", "example_mask", "input_ids",
                                          "labels"]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} step {step} {key}")
        widths.add(a["input_ids"].shape[1])
    if buckets:  # the cut happened somewhere, else the test would not test it
        assert min(widths) < length
    cut = [a for a in fast if (a["attention_mask"].sum(1) == length).any()]
    if name == "xnli.de" and length == 24:
        assert cut, "no pair reached the length: longest-first cutting untested"


def test_only_project_classification_tasks_from_files_take_it(world):
    nli = seqio.get_mixture_or_task("synthetic.nli.en")
    assert S._batched_features(nli, shuffle=True, use_cached=False) is not None
    assert S._batched_features(nli, shuffle=True, use_cached=True) is None  # the cache
    S.register_task(T.get_task("synthetic.ner.en"), world["root"], world["vocab"],
                    allow_samples=True)
    assert S._batched_features(seqio.get_mixture_or_task("synthetic.ner.en"), shuffle=True,
                               use_cached=False) is None  # another kind
    user = seqio.Task("user_pairs", source=nli.source, preprocessors=list(nli.preprocessors),
                      output_features=nli.output_features, shuffle_buffer_size=None)
    assert S._batched_features(user, shuffle=True, use_cached=False) is None  # cannot shuffle
    assert S._batched_features(user, shuffle=False, use_cached=False) is not None
