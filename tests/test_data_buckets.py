"""Length buckets and packed MLM rows (issue 16 item 3, data side), native pipeline: a bucketed
batch is the full-length batch cut at its bucket, every host agrees on the width, resume is
exact, and the tiny model's per-example losses do not change; packed MLM rows carry segment ids
whose positions are each segment's own and whose losses are the unpacked rows' losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import shared_data_dir
from xstilts import trainer
from xstilts.data import pipeline as PL
from xstilts.data import preprocessors as P
from xstilts.data.feature_converters import (
    FeatureBatcher,
    ShardInfo,
    bucket_for,
    bucket_lengths,
    fit_width,
)
from xstilts.models import heads
from xstilts.models.xlmr import XLMRConfig, position_ids_from_segment_ids
from xstilts.tokenization import XLMRTokenizer

CONFIG = XLMRConfig.tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def tok():
    spm = shared_data_dir() / "spm/test_model.model"
    if not spm.is_file():
        pytest.skip(f"real data sample {spm} is missing")
    return XLMRTokenizer(spm)


def _features(tok, name: str, length: int, split: str = "dev") -> list[dict]:
    return PL.task_features(name, split, tok, data_dir=shared_data_dir(), max_length=length,
                            allow_samples=True)


def test_bucket_lengths_and_errors():
    assert bucket_lengths(128, None) is None and bucket_lengths(128, ()) is None
    assert bucket_lengths(128, "auto") == (16, 32, 48, 64, 80, 96, 112, 128)
    assert bucket_lengths(384, "auto") == (48, 96, 144, 192, 240, 288, 336, 384)
    assert bucket_lengths(100, "auto") == (16, 32, 40, 56, 64, 80, 88, 100)
    assert bucket_lengths(256, [128, 64]) == (64, 128, 256)
    assert bucket_for(65, (64, 128, 256)) == 128 and bucket_for(64, (64, 128)) == 64
    with pytest.raises(ValueError, match=r"\[300\] outside 1..256"):
        bucket_lengths(256, (64, 300))
    with pytest.raises(ValueError, match="'big'"):
        bucket_lengths(256, "big")
    batch = {"input_ids": np.array([[5, 6, 1]]), "attention_mask": np.array([[1, 1, 0]]),
             "labels": np.array([2])}
    with pytest.raises(ValueError, match="tokens beyond it"):
        fit_width(batch, 1)
    wide = fit_width(batch, 5)
    assert wide["input_ids"].tolist() == [[5, 6, 1, 1, 1]] and wide["labels"].tolist() == [2]


@pytest.mark.parametrize("name,split,length,buckets", [
    ("xnli.en", "dev", 128, "auto"),  # classification, real XNLI pairs
    ("udpos.en", "dev", 128, (32, 48, 64, 96)),  # tagging: labels and label_mask cut too
    ("commonsenseqa.en", "train", 64, (32, 40, 48)),  # multiple choice: the longest choice
])  # fmt: skip
def test_bucketed_batches_are_the_full_batches_cut_and_hosts_agree(tok, name, split, length,
                                                                   buckets):
    features = _features(tok, name, length, split)
    spec = PL.get_task(name)
    options = dict(batch_size=1 if spec.num_choices else 4, length=length, seed=1,
                   num_choices=spec.num_choices)
    hosts = [FeatureBatcher(features, spec.kind, shard_info=ShardInfo(i, 2),
                            length_buckets=buckets, **options) for i in range(2)]
    full = [FeatureBatcher(features, spec.kind, shard_info=ShardInfo(i, 2), **options)
            for i in range(2)]
    table = bucket_lengths(length, buckets)
    widths = []
    for step in range(hosts[0].steps_per_epoch + 1):  # into the second epoch
        got = [h.batch(step) for h in hosts]
        whole = [f.batch(step) for f in full]
        longest = max(int(w["attention_mask"].sum(-1).max()) for w in whole)
        width = got[0]["input_ids"].shape[-1]
        assert width == bucket_for(longest, table), step  # the global batch's bucket
        widths.append(width)
        for g, w in zip(got, whole, strict=True):
            assert g["input_ids"].shape[-1] == width  # every host the same shape
            assert sorted(g) == sorted(w)
            for key, value in fit_width(w, width).items():
                np.testing.assert_array_equal(g[key], value, err_msg=f"{name} {step} {key}")
    assert len(set(widths)) > 1 and min(widths) < length  # buckets did something here
    resumed = FeatureBatcher(features, spec.kind, shard_info=ShardInfo(1, 2),
                             length_buckets=buckets, **options)
    for step in (3, 0, hosts[0].steps_per_epoch):  # exact resume, in any order
        for key, value in hosts[1].batch(step).items():
            np.testing.assert_array_equal(resumed.batch(step)[key], value)


def _per_example(model, params, batch, loss_fn, kind):
    logits = model.apply({"params": params}, jnp.asarray(batch["input_ids"]),
                         jnp.asarray(batch["attention_mask"]), deterministic=True)
    if kind == "tagging":
        logits = logits[:, :batch["input_ids"].shape[-1]]
    rows = len(batch["input_ids"])
    out = []
    for row in range(rows):
        only = {k: jnp.asarray(v) for k, v in batch.items()}
        only["example_mask"] = jnp.asarray(np.eye(rows, dtype=np.int32)[row])
        out.append(float(loss_fn(logits, only).loss_sum))
    return np.asarray(out)


@pytest.mark.parametrize("name,length,buckets,kind", [
    ("xnli.en", 128, "auto", "classification"),
    ("udpos.en", 128, (32, 64, 96), "tagging"),
])  # fmt: skip
def test_bucketed_batches_give_the_per_example_losses_of_full_batches(tok, name, length,
                                                                     buckets, kind):
    features = _features(tok, name, length)
    labels = len(PL.task_labels(PL.get_task(name), shared_data_dir(), allow_samples=True))
    model = (heads.XLMRForSequenceClassification if kind == "classification"
             else heads.XLMRForTokenClassification)(CONFIG, labels)
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32),
                        jnp.ones((1, 8), jnp.int32))["params"]
    loss_fn = trainer.task_loss(kind)
    options = dict(batch_size=8, length=length, seed=0)
    bucketed = FeatureBatcher(features, kind, length_buckets=buckets, **options)
    full = FeatureBatcher(features, kind, **options)
    widths = set()
    for step in range(3):
        small, whole = bucketed.batch(step), full.batch(step)
        widths.add(small["input_ids"].shape[-1])
        got = _per_example(model, params, small, loss_fn, kind)
        want = _per_example(model, params, whole, loss_fn, kind)
        assert np.all(want[small["example_mask"] > 0] > 0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert min(widths) < length


TEXTS = ["The cat sat on the mat.", "",
         "A much longer document that is going to be cut into several chunks because it "
         "has far more pieces than one row can hold at this tiny length.",
         "Short one.", "Another short one here."]


def test_packed_mlm_rows_segments_and_positions(tok):
    length = 24
    rows = P.mlm_documents(TEXTS, tok, length)
    documents = [tok.encode_text(t) for t in TEXTS]
    chunks = [d[i:i + length - 2] for d in documents for i in range(0, len(d), length - 2)]
    got = []
    for row in rows:
        ids, seg = row["input_ids"], row["segment_ids"]
        assert len(ids) == len(seg) <= length
        assert seg[0] == 1 and np.all(np.diff(seg) >= 0) and np.all(np.diff(seg) <= 1)
        for s in range(1, seg.max() + 1):
            part = ids[seg == s]
            assert part[0] == tok.bos_id and part[-1] == tok.eos_id
            got.append(part[1:-1].tolist())
    assert got == chunks  # every chunk once, in order, whole
    assert len(rows) < len(chunks)  # several segments share rows
    # the next segment did not fit: rows are filled greedily
    for row, after in zip(rows, rows[1:], strict=False):
        first = int((after["segment_ids"] == 1).sum())
        assert len(row["input_ids"]) + first > length
    batch = FeatureBatcher(rows, "mlm", batch_size=4, length=length, shuffle=False,
                           mlm={"mask_id": tok.mask_id}).batch(0)
    seg = batch["segment_ids"]
    assert seg.shape == (4, length) and np.array_equal(seg > 0, batch["attention_mask"] > 0)
    positions = np.asarray(position_ids_from_segment_ids(jnp.asarray(seg), CONFIG.pad_token_id))
    for r in range(4):
        for s in range(1, seg[r].max() + 1):
            n = int((seg[r] == s).sum())  # HF numbers a sequence alone pad+1, pad+2, ...
            assert positions[r][seg[r] == s].tolist() == list(range(2, 2 + n))
        assert np.all(positions[r][seg[r] == 0] == CONFIG.pad_token_id)


def test_packed_mlm_batch_gives_the_per_segment_losses_of_unpacked_rows(tok):
    """The model's segment_ids support: the pipeline's packed batch (masked as it comes) and
    the same masked segments one per row give the same MLM loss per segment."""
    length = 24
    rows = P.mlm_documents(TEXTS * 2, tok, length)
    packed = FeatureBatcher(rows, "mlm", batch_size=4, length=length, shuffle=False,
                            mlm={"mask_id": tok.mask_id}).batch(0)
    assert packed["label_mask"].sum() > 0 and packed["segment_ids"].max() > 1
    pieces = []  # (row, segment) -> its masked ids, labels, label mask, alone in a row
    for r in range(4):
        for s in range(1, packed["segment_ids"][r].max() + 1):
            where = packed["segment_ids"][r] == s
            pieces.append((r, s, *(packed[k][r][where] for k in
                                   ("input_ids", "labels", "label_mask"))))
    alone = {k: np.full((len(pieces), length), fill, np.int32) for k, fill in
             (("input_ids", 1), ("labels", 1), ("label_mask", 0), ("attention_mask", 0))}
    for i, (_, _, ids, labels, mask) in enumerate(pieces):
        n = len(ids)
        alone["input_ids"][i, :n], alone["labels"][i, :n] = ids, labels
        alone["label_mask"][i, :n], alone["attention_mask"][i, :n] = mask, 1
    model = heads.XLMRForMaskedLM(CONFIG)
    params = model.init(jax.random.PRNGKey(1), jnp.ones((1, 8), jnp.int32),
                        jnp.ones((1, 8), jnp.int32))["params"]
    packed_logits = model.apply({"params": params}, jnp.asarray(packed["input_ids"]),
                                jnp.asarray(packed["attention_mask"]),
                                segment_ids=jnp.asarray(packed["segment_ids"]))
    alone_logits = model.apply({"params": params}, jnp.asarray(alone["input_ids"]),
                               jnp.asarray(alone["attention_mask"]))
    for i, (r, s, *_) in enumerate(pieces):
        mask = (packed["segment_ids"][r] == s) * packed["label_mask"][r]
        got = trainer.token_loss(packed_logits[r:r + 1], {
            "labels": jnp.asarray(packed["labels"][r:r + 1]),
            "label_mask": jnp.asarray(mask[None])})
        want = trainer.token_loss(alone_logits[i:i + 1], {
            "labels": jnp.asarray(alone["labels"][i:i + 1]),
            "label_mask": jnp.asarray(alone["label_mask"][i:i + 1])})
        assert float(got.weight) == float(want.weight)
        np.testing.assert_allclose(float(got.loss_sum), float(want.loss_sum), rtol=1e-5,
                                   atol=1e-6)


def test_length_grouping_fills_buckets_and_keeps_every_row_once(tok):
    features = _features(tok, "xnli.en", 128)
    options = dict(batch_size=4, length=128, seed=2, length_buckets="auto")
    plain = [FeatureBatcher(features, "classification", shard_info=ShardInfo(i, 2), **options)
             for i in range(2)]
    grouped = [FeatureBatcher(features, "classification", shard_info=ShardInfo(i, 2),
                              length_grouping=8, **options) for i in range(2)]

    def epoch(hosts, number):
        seen, real, computed = [], 0, 0
        steps = hosts[0].steps_per_epoch
        for step in range(number * steps, (number + 1) * steps):
            batches = [h.batch(step) for h in hosts]
            assert len({b["input_ids"].shape[-1] for b in batches}) == 1
            for b in batches:
                seen += [int(i) for i in b["feature_index"] if i >= 0]
                real += int(b["attention_mask"].sum())
                computed += b["attention_mask"].size
        return seen, real / computed

    seen, grouped_efficiency = epoch(grouped, 1)
    assert sorted(seen) == list(range(len(features)))  # every row once per epoch
    _, plain_efficiency = epoch(plain, 1)
    assert grouped_efficiency > plain_efficiency + 0.15
    again = FeatureBatcher(features, "classification", shard_info=ShardInfo(1, 2),
                           length_grouping=8, **options)
    for step in (70, 3):  # exact resume
        for key, value in grouped[1].batch(step).items():
            np.testing.assert_array_equal(again.batch(step)[key], value)
    other = epoch(grouped, 0)[0]
    assert other != seen  # a new grouping every epoch
