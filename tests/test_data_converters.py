"""Fixed-shape batches, host sharding, exact resume, and mixture sampling rates."""

import numpy as np
import pytest

from xstilts.data import feature_converters as fc


def _features(n, length=5, kind="classification"):
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        ids = np.concatenate([[0], rng.integers(4, 50, size=rng.integers(1, length - 1)), [2]])
        feature = {"input_ids": ids.astype(np.int32), "labels": i % 3, "example_id": f"ex{i}"}
        if kind == "tagging":
            feature["labels"] = np.full(len(ids), i % 5, np.int32)
            feature["label_mask"] = np.ones(len(ids), np.int32)
        if kind == "qa":
            feature.update(start_positions=1, end_positions=len(ids) - 2)
        out.append(feature)
    return out


def test_pad_batch_shapes_and_values():
    features = _features(3, length=6)
    batch = fc.pad_batch([*features, None], "classification", 8)
    assert batch["input_ids"].shape == (4, 8) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].sum(1).tolist() == [len(f["input_ids"]) for f in features] + [0]
    assert batch["example_mask"].tolist() == [1, 1, 1, 0]
    assert batch["labels"].tolist() == [0, 1, 2, -1]
    assert (batch["input_ids"][3] == 1).all()  # padding example is all <pad>
    n = len(features[0]["input_ids"])
    assert batch["input_ids"][0, :n].tolist() == features[0]["input_ids"].tolist()
    assert (batch["input_ids"][0, n:] == 1).all()
    tagging = fc.pad_batch(_features(2, kind="tagging"), "tagging", 8)
    assert tagging["labels"].shape == tagging["label_mask"].shape == (2, 8)
    assert tagging["labels"][0, -1] == -1 and tagging["label_mask"][0, -1] == 0
    qa = fc.pad_batch(_features(2, kind="qa"), "qa", 8)
    assert qa["start_positions"].tolist() == [1, 1]
    choices = [{"input_ids": [np.array([0, 5, 2]), np.array([0, 6, 7, 2])], "labels": 1}]
    mc = fc.pad_batch([*choices, None], "multiple_choice", 6)
    assert mc["input_ids"].shape == (2, 2, 6) and mc["attention_mask"][0].sum(-1).tolist() == [3, 4]
    with pytest.raises(ValueError, match="'ex0' has .* tokens, longer than the batch length 2"):
        fc.pad_batch(features, "classification", 2)


def test_two_host_shards_cover_every_example_exactly_once():
    features = _features(103)
    seen = []
    for host in range(2):
        batcher = fc.FeatureBatcher(
            features, "classification", batch_size=8, length=6, seed=3,
            shard_info=fc.ShardInfo(host, 2),
        )  # fmt: skip
        assert batcher.steps_per_epoch == 7  # ceil(103 / 16)
        for batch in batcher.epoch(0):
            real = batch["feature_index"][batch["example_mask"] == 1]
            assert (batch["feature_index"][batch["example_mask"] == 0] == -1).all()
            for i in real:  # the row really holds that feature
                row = np.flatnonzero(batch["feature_index"] == i)[0]
                n = len(features[i]["input_ids"])
                assert batch["input_ids"][row, :n].tolist() == features[i]["input_ids"].tolist()
            seen.extend(real.tolist())
    assert sorted(seen) == list(range(103))


def test_order_is_seeded_and_resume_is_exact():
    features = _features(50)
    a = fc.FeatureBatcher(features, "classification", batch_size=4, length=6, seed=1)
    b = fc.FeatureBatcher(features, "classification", batch_size=4, length=6, seed=1)
    c = fc.FeatureBatcher(features, "classification", batch_size=4, length=6, seed=2)
    run = list(a.iterate(0, 40))  # crosses three epochs (13 steps each)
    resumed = list(b.iterate(17, 23))
    for x, y in zip(run[17:], resumed, strict=True):
        assert all((x[k] == y[k]).all() for k in x)
    assert (run[0]["feature_index"] != c.batch(0)["feature_index"]).any()
    first_epoch = np.concatenate([x["feature_index"] for x in run[:13]])
    assert sorted(first_epoch[first_epoch >= 0].tolist()) == list(range(50))
    second_epoch = np.concatenate([x["feature_index"] for x in run[13:26]])
    assert (first_epoch != second_epoch).any()  # reshuffled each epoch
    ordered = fc.FeatureBatcher(features, "classification", batch_size=4, length=6, shuffle=False)
    assert ordered.batch(1)["feature_index"].tolist() == [4, 5, 6, 7]


def test_mlm_batches_are_masked_deterministically():
    features = _features(20, length=30)
    batcher = fc.FeatureBatcher(
        features, "mlm", batch_size=6, length=32, seed=0, mlm={"mask_id": 999}
    )
    x, y = batcher.batch(3), batcher.batch(3)
    assert all((x[k] == y[k]).all() for k in x)
    assert (x["label_mask"][x["example_mask"] == 0] == 0).all()
    assert (x["labels"][x["label_mask"] == 1] >= 4).all()


def test_mlm_masks_do_not_depend_on_the_number_of_hosts():
    """Two hosts of 4 rows see exactly the rows, and masks, of one host of 8 (multi-host runs)."""
    features = _features(40, length=30)
    kwargs = dict(length=32, seed=4, mlm={"mask_id": 999})
    one = fc.FeatureBatcher(features, "mlm", batch_size=8, **kwargs)
    two = [fc.FeatureBatcher(features, "mlm", batch_size=4, shard_info=fc.ShardInfo(h, 2),
                             **kwargs) for h in range(2)]
    for step in (0, 3, 7):
        whole = one.batch(step)
        halves = [b.batch(step) for b in two]
        assert whole["label_mask"].sum() > 0
        for key in whole:
            np.testing.assert_array_equal(
                whole[key], np.concatenate([h[key] for h in halves]), err_msg=key)


def test_proportional_and_temperature_rates():
    sizes = {"big": 1_000_000, "mid": 10_000, "small": 100}
    prop = fc.proportional_rates(sizes)
    assert prop["small"] == pytest.approx(100 / 1_010_100)
    capped = fc.proportional_rates(sizes, cap=10_000)
    assert capped == pytest.approx(
        {"big": 10_000 / 20_100, "mid": 10_000 / 20_100, "small": 100 / 20_100}
    )
    assert fc.temperature_rates(sizes, 1.0) == pytest.approx(prop)
    hot = fc.temperature_rates(sizes, 5.0)
    raw = {k: (v / 1_010_100) ** 0.2 for k, v in sizes.items()}
    assert hot == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()})
    assert hot["small"] > 50 * prop["small"]  # low resource upsampled
    assert fc.temperature_rates(sizes, 1e9) == pytest.approx({k: 1 / 3 for k in sizes}, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_mixture_sampling_frequencies_match_rates(temperature):
    sizes = {"mnli": 5000, "squad": 1000, "tiny": 20}
    rates = fc.temperature_rates(sizes, temperature)
    batchers = {
        name: fc.FeatureBatcher(_features(n), "classification", batch_size=2, length=6, seed=5)
        for name, n in sizes.items()
    }
    mixture = fc.MixtureBatcher(batchers, rates, seed=11)
    steps = 20_000
    names = [mixture.task_and_step(step)[0] for step in range(steps)]
    for name, p in rates.items():
        frequency = names.count(name) / steps
        assert abs(frequency - p) < 4 * np.sqrt(p * (1 - p) / steps), (name, frequency, p)


def test_mixture_resume_is_exact():
    batchers = {
        name: fc.FeatureBatcher(_features(n), "classification", batch_size=2, length=6, seed=5)
        for name, n in {"a": 30, "b": 7}.items()
    }
    mixture = fc.MixtureBatcher(batchers, {"a": 0.7, "b": 0.3}, seed=2)
    mixture.BLOCK = 16  # exercise block boundaries
    run = list(mixture.iterate(0, 60))
    counts = {"a": 0, "b": 0}
    for step, (name, batch) in enumerate(run):  # each task's own counter advances by one
        assert mixture.task_and_step(step) == (name, counts[name])
        assert (batch["feature_index"] == batchers[name].batch(counts[name])["feature_index"]).all()
        counts[name] += 1
    fresh = fc.MixtureBatcher(batchers, {"a": 0.7, "b": 0.3}, seed=2)
    fresh.BLOCK = 16
    for step in (59, 33, 0):
        name, batch = fresh.batch(step)
        assert name == run[step][0] and (batch["input_ids"] == run[step][1]["input_ids"]).all()
    with pytest.raises(KeyError, match="without batches"):
        fc.MixtureBatcher(batchers, {"a": 1.0, "nope": 1.0})


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="no classification features"):
        fc.FeatureBatcher([], "classification", batch_size=2, length=4)
