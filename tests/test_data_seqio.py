"""The seqio path (Task -> get_dataset -> FeatureConverter -> batch) against the native pipeline,
every registered task's get_dataset, rates, sharding, resume, and a user's own seqio Task."""

import collections

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

from tests.conftest import shared_data_dir  # noqa: E402
from xstilts.data import pipeline as PL  # noqa: E402
from xstilts.data import readers  # noqa: E402
from xstilts.data import seqio_converters as C  # noqa: E402
from xstilts.data import seqio_tasks as S  # noqa: E402
from xstilts.data import tasks as T  # noqa: E402
from xstilts.data.feature_converters import FeatureBatcher, ShardInfo  # noqa: E402
from xstilts.data.synthetic import SyntheticWorld  # noqa: E402
from xstilts.tokenization import XLMRTokenizer, xlmr_vocabulary  # noqa: E402

SIZES = {"train": 40, "dev": 6, "test": 6}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data dir: the shared samples linked in place (never copied), plus the synthetic world;
    every task registered with seqio on the test SentencePiece model."""
    shared = shared_data_dir()
    spm = shared / "spm/test_model.model"
    if not spm.is_file():
        pytest.skip(f"real data sample {spm} is missing")
    root = tmp_path_factory.mktemp("seqio_data")
    for entry in shared.iterdir():
        (root / entry.name).symlink_to(entry)
    SyntheticWorld(seed=0).write_files(root / "synthetic", SIZES)
    vocab = xlmr_vocabulary(spm)
    tasks, mixtures = S.register_all(root, vocab, allow_samples=True)
    return {"root": root, "vocab": vocab, "tok": XLMRTokenizer(spm), "tasks": tasks,
            "mixtures": mixtures}


@pytest.fixture(autouse=True)
def _registered_here(world):
    """Tests of other modules on the same xdist worker may register the same names on another
    data dir in between: register this module's again (0.1 s)."""
    S.register_all(world["root"], world["vocab"], allow_samples=True)


def _native(world, name, split, length, batch_size, buckets=None):
    spec = T.get_task(name)
    features = PL.task_features(name, split, world["tok"], data_dir=world["root"],
                                max_length=length, allow_samples=True)
    mlm = {"mask_id": world["tok"].mask_id} if spec.kind == "mlm" else None
    return features, FeatureBatcher(features, spec.kind, batch_size=batch_size, length=length,
                                    shuffle=False, num_choices=spec.num_choices, mlm=mlm,
                                    length_buckets=buckets)


# (task, split, length, batch size): every kind, synthetic and real samples, lengths that cut
# pairs, split tagging sentences and make several QA windows
PARITY = [
    ("synthetic.nli.xb", "train", 32, 8),
    ("xnli.de", "dev", 24, 64),
    ("synthetic.ner.en", "train", 12, 16),
    ("udpos.en", "dev", 16, 128),
    ("synthetic.qa.xa", "train", 40, 16),
    ("squad_v2.en", "train", 64, 8),
    ("mlqa.de", "dev", 96, 128),
    ("hellaswag.en", "train", 32, 2),
    ("commonsenseqa.en", "train", 24, 2),
    ("cosmosqa.en", "dev", 48, 16),
    ("synthetic.mlm.xb", "train", 24, 32),
]


@pytest.mark.parametrize("name,split,length,batch_size", PARITY)
def test_every_batch_of_the_seqio_path_equals_the_native_batch(world, name, split, length,
                                                                batch_size):
    features, native = _native(world, name, split, length, batch_size)
    stream = S.seqio_batches(name, sequence_length={"inputs": length}, batch_size=batch_size,
                             split=split, shuffle=False, num_epochs=1)
    batches = list(stream)
    assert len(batches) == native.steps_per_epoch
    for step, (task, batch) in enumerate(batches):
        expected = native.batch(step)
        del expected["feature_index"]  # host-side bookkeeping of the native path
        assert task == name and sorted(batch) == sorted(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(batch[key], value, err_msg=f"{name} step {step} {key}")
            assert batch[key].dtype == np.int32
    assert sum(int(b["example_mask"].sum()) for _, b in batches) == len(features)


# length buckets: each batch as wide as its longest row's bucket, in both paths
BUCKETED = [
    ("xnli.en", "dev", 128, 16, "auto"),
    ("udpos.en", "dev", 128, 8, (32, 64, 96)),
    ("synthetic.qa.xa", "train", 128, 1, (32, 48, 64, 96)),  # the last window is short
    ("commonsenseqa.en", "train", 64, 1, (32, 40, 48)),
    ("synthetic.mlm.xb", "train", 24, 8, (8, 16)),  # stream rows are full: masks still equal
]


@pytest.mark.parametrize("name,split,length,batch_size,buckets", BUCKETED)
def test_bucketed_seqio_batches_equal_the_native_bucketed_batches(world, name, split, length,
                                                                  batch_size, buckets):
    _, native = _native(world, name, split, length, batch_size, buckets)
    stream = S.seqio_batches(name, sequence_length=length, batch_size=batch_size, split=split,
                             shuffle=False, num_epochs=1, length_buckets=buckets)
    widths = []
    for step, (_, batch) in enumerate(stream):
        expected = native.batch(step)
        del expected["feature_index"]
        widths.append(batch["input_ids"].shape[-1])
        for key, value in expected.items():
            np.testing.assert_array_equal(batch[key], value, err_msg=f"{name} step {step} {key}")
    assert step + 1 == native.steps_per_epoch
    assert min(widths) < length or T.get_task(name).kind == "mlm"


def test_seqio_hosts_agree_on_the_width(world):
    """Each host sees its shard only; ``agree_width`` (here: the largest of both hosts' widths
    at the step, what seqio_feed's all-gather returns) gives both the step's shape."""
    def run(i, agree):
        return [b for _, b in S.seqio_batches(
            "xnli.en", sequence_length=128, batch_size=8, split="dev", shuffle=False,
            num_epochs=1, length_buckets="auto", shard_info=ShardInfo(i, 2), agree_width=agree)]

    local = [[], []]
    for i in range(2):
        run(i, lambda w, i=i: local[i].append(w) or w)
    assert local[0] != local[1]  # the shards alone would disagree
    agreed = [max(a, b) for a, b in zip(*local, strict=True)]
    hosts = []
    for i in range(2):
        steps = iter(range(len(agreed)))
        hosts.append(run(i, lambda w, steps=steps: agreed[next(steps)]))
    alone = [b for _, b in S.seqio_batches("xnli.en", sequence_length=128, batch_size=8,
                                           split="dev", shuffle=False, num_epochs=1)]
    for step, width in enumerate(agreed):
        for i in range(2):
            batch = hosts[i][step]
            assert batch["input_ids"].shape[-1] == width
            rows = alone[0]["input_ids"][:0]  # the host's rows i, i+2, ... of the one-host run
            full = np.concatenate([alone[(2 * 8 * step + r) // 8]["input_ids"][
                (2 * 8 * step + r) % 8][None] for r in range(i, 16, 2)
                if 2 * 8 * step + r < 8 * len(alone)] or [rows])
            np.testing.assert_array_equal(batch["input_ids"][:len(full)], full[:, :width])
    with pytest.raises(ValueError, match="needs agree_width"):
        next(S.seqio_batches("xnli.en", sequence_length=128, batch_size=8, length_buckets="auto",
                             shard_info=ShardInfo(0, 2)))


def test_parity_cases_exercise_cuts_windows_and_labels(world):
    (_, xnli), = S.seqio_batches("xnli.de", sequence_length=24, batch_size=500, split="dev",
                                 shuffle=False, num_epochs=1)  # fmt: skip
    assert (xnli["attention_mask"].sum(1) == 24).mean() > 0.9  # pairs cut longest-first
    assert sorted(np.unique(xnli["labels"])) == [0, 1, 2]
    mlqa = [b for _, b in S.seqio_batches("mlqa.de", sequence_length=96, batch_size=2048,
                                          split="dev", shuffle=False, num_epochs=1)]
    assert int(mlqa[0]["example_mask"].sum()) == 1842  # 202 questions -> 1842 windows of 96
    assert (mlqa[0]["start_positions"] > 0).sum() == 156  # windows that hold their answer
    (_, hellaswag), = S.seqio_batches("hellaswag.en", sequence_length=32, batch_size=2,
                                      split="train", shuffle=False, num_epochs=1)  # fmt: skip
    assert hellaswag["input_ids"].shape == (2, 4, 32)


def test_preprocessing_on_the_source_chunks_equals_the_rebatched_path(world):
    """Big splits (not cached in memory by seqio) preprocess the source's own chunks; small
    ones unbatch and rebatch: the same examples either way."""
    task = seqio.get_mixture_or_task("xnli.de")
    (preprocess,) = task.preprocessors
    source = task.source.get_dataset("dev", shuffle=False)
    assert source._xstilts_chunks is not None
    chunked = list(preprocess(source, task.output_features).as_numpy_iterator())
    plain = list(preprocess(source.map(dict), task.output_features).as_numpy_iterator())
    assert len(chunked) == len(plain) == 500
    for a, b in zip(chunked, plain, strict=True):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_longest_first_matches_the_tokenizer(world):
    a, b, budget = np.meshgrid(np.arange(0, 30), np.arange(0, 30), np.arange(0, 25))
    keep_a, keep_b = C.longest_first(tf.constant(a.ravel()), tf.constant(b.ravel()),
                                     tf.constant(budget.ravel()))  # fmt: skip
    expected = [tuple(map(len, world["tok"].truncate(list(range(x)), list(range(y)), n + 4)))
                for x, y, n in zip(a.ravel(), b.ravel(), budget.ravel(), strict=True)]
    assert list(zip(keep_a.numpy(), keep_b.numpy(), strict=True)) == expected


def test_single_sentence_rows_and_the_converter_contract(world):
    tok = world["tok"]
    texts = ["Hello world, this is a longer single sentence", "Hi"]
    ds = tf.data.Dataset.from_tensor_slices({
        "inputs": tf.ragged.constant([tok.encode_text(t) for t in texts]),
        "inputs_b": tf.ragged.constant([[], []], dtype=tf.int32), "targets": [1, 0]}).map(
        lambda ex: {k: v.to_tensor() if isinstance(v, tf.RaggedTensor) else v
                    for k, v in ex.items()})  # fmt: skip
    trimmed = ds.map(lambda ex: {**ex, "inputs": ex["inputs"][:8]})  # as get_dataset trims
    rows = list(C.ClassificationConverter()(trimmed, {"inputs": 8}).as_numpy_iterator())
    expected = tok.batch_encode(texts, max_length=8)
    np.testing.assert_array_equal([r["input_ids"] for r in rows], expected["input_ids"])
    np.testing.assert_array_equal([r["attention_mask"] for r in rows], expected["attention_mask"])
    assert [int(r["labels"]) for r in rows] == [1, 0]
    with pytest.raises(ValueError, match="task_feature_lengths"):
        C.ClassificationConverter()(ds, {"targets": 8})
    with pytest.raises(ValueError, match="lack \\['inputs_b', 'targets'\\]"):
        C.ClassificationConverter()(ds.map(lambda ex: {"inputs": ex["inputs"]}), {"inputs": 8})


# The table's tasks, taken at collection (before any test registers tasks of its own).
TABLE_TASKS = frozenset(T.TASKS)


def test_get_dataset_for_every_registered_task_with_files(world):
    root, checked = world["root"], collections.Counter()
    for name in sorted(TABLE_TASKS & set(world["tasks"])):
        spec = T.get_task(name)
        split = next((s for s in spec.splits if _has_file(spec, s, root)), None)
        if split is None:
            continue
        task = seqio.get_mixture_or_task(name)
        dataset = task.get_dataset(sequence_length={"inputs": 64}, split=split, shuffle=False)
        first = next(iter(dataset.take(1).as_numpy_iterator()), None)
        assert first is not None, f"{name} {split}: no example"
        assert set(first) == set(task.output_features), name
        assert 0 < len(first["inputs"]) and first["inputs"].max() < world["vocab"].vocab_size
        assert task.num_input_examples(split) > 0
        checked[spec.kind] += 1
    # every kind, every synthetic and shared-sample task with a file
    # udpos 5 + panx 40 + synthetic 10; xnli 15 + pawsx 7 + English 6 + synthetic 10; xquad 11
    # + mlqa 7 + tydiqa 9 + squad 2 + synthetic 5; hellaswag, cosmosqa, commonsenseqa; mlm 5
    assert checked == {"tagging": 55, "classification": 38, "qa": 34, "multiple_choice": 3,
                       "mlm": 5}


def _has_file(spec, split, root):
    try:
        PL.sources.resolve(spec, split, root, allow_samples=True)
    except FileNotFoundError:
        return False
    return True


def test_mixing_rate_num_examples_and_seqio_rates_agree_with_ours(world):
    xb = seqio.get_mixture_or_task("synthetic.nli.xb")
    assert seqio.mixing_rate_num_examples(xb) == 20 == len(list(
        PL.sources.read(T.get_task("synthetic.nli.xb"), "train", world["root"])))
    users = seqio.Mixture("by_size", ["synthetic.nli.en", "synthetic.nli.xb"],
                          default_rate=seqio.mixing_rate_num_examples)  # fmt: skip
    assert [users.get_rate(t) for t in users.tasks] == [40, 20]
    for name in ("synthetic.intermediate.all.multilingual+mlm", "intermediate.anli_plus.en"):
        mixture = seqio.get_mixture_or_task(name)
        sizes = {t.name: t.num_input_examples("train") for t in mixture.tasks}
        expected = T.mixture_rates(name, sizes)
        rates = {t.name: mixture.get_rate(t) / mixture.total_rate for t in mixture.tasks}
        assert rates == pytest.approx(expected) and sum(rates.values()) == pytest.approx(1)
        mlm = sum(p for task, p in rates.items() if task.startswith("synthetic.mlm."))
        assert mlm == pytest.approx(T.MLM_SHARE if name.endswith("+mlm") else 0)


def test_shards_split_the_examples_seqio_s_way(world):
    def rows(shard):
        return collections.Counter(
            tuple(r) for _, b in S.seqio_batches(
                "xnli.de", sequence_length=32, batch_size=16, split="dev", shuffle=False,
                num_epochs=1, shard_info=shard)
            for r, m in zip(b["input_ids"], b["example_mask"], strict=True) if m)

    first, second = rows(seqio.ShardInfo(0, 2)), rows(ShardInfo(1, 2))
    assert sum(first.values()) == sum(second.values()) == 250
    assert first + second == rows(None)


def test_training_streams_are_seeded_and_resume_exactly(world):
    for name in ("synthetic.intermediate.nli.multilingual",  # one kind: seqio's own mixing
                 "synthetic.intermediate.all.en+mlm"):  # kinds differ: one task per step
        run = S.seqio_batches(name, sequence_length=32, batch_size=4, seed=3)
        steps = [next(run) for _ in range(12)]
        resumed = S.seqio_batches(name, sequence_length=32, batch_size=4, seed=3, start_step=9)
        for (task, batch), (again_task, again) in zip(steps[9:], resumed, strict=False):
            assert task == again_task
            for key in batch:
                np.testing.assert_array_equal(batch[key], again[key], err_msg=f"{name} {key}")
        other = next(S.seqio_batches(name, sequence_length=32, batch_size=4, seed=4))
        assert not np.array_equal(other[1]["input_ids"], steps[0][1]["input_ids"])
    seen = {task for task, _ in steps}
    assert {"synthetic.nli.en", "synthetic.qa.en"} <= seen
    assert any(task.startswith("synthetic.mlm.") for task in seen)
    mlm = next(b for task, b in steps if task.startswith("synthetic.mlm"))
    assert mlm["label_mask"].sum() > 0 and sorted(mlm) == [
        "attention_mask", "example_mask", "input_ids", "label_mask", "labels"]


def test_kinds_and_errors(world):
    assert S.seqio_task_kind("udpos.en") == "tagging"
    assert S.seqio_task_kind("intermediate.mnli.multilingual") == "classification"
    with pytest.raises(ValueError, match="mixes task kinds \\['classification', 'mlm', 'qa'\\]"):
        seqio.get_mixture_or_task("synthetic.intermediate.all.en+mlm").get_dataset(
            {"inputs": 32})
    with pytest.raises(KeyError, match="register_all"):
        next(S.seqio_batches("no.such.task", sequence_length=32, batch_size=2))
    with pytest.raises(FileNotFoundError, match="synthetic.nli.xd split 'train': no data file"):
        seqio.get_mixture_or_task("synthetic.nli.xd").get_dataset({"inputs": 32})


def test_unknown_label_names_the_task_and_file(world, tmp_path):
    ds = tf.data.Dataset.from_tensors({"label": tf.constant("maybe")})
    with pytest.raises(tf.errors.InvalidArgumentError, match="task t: unknown label"):
        list(S.label_index(ds, labels=("yes", "no"), task="t").as_numpy_iterator())
    (tmp_path / "synthetic/nli").mkdir(parents=True)
    (tmp_path / "synthetic/nli/dev-en.tsv").write_text("a b\tc d\tentailment\nx\ty\tmaybe\n")
    spec = T.get_task("synthetic.nli.en")
    S.register_task(spec, tmp_path, world["vocab"])
    try:
        with pytest.raises(readers.DataFormatError, match="dev-en.tsv:2: unknown label 'maybe'"):
            list(seqio.get_mixture_or_task(spec.name).get_dataset(
                {"inputs": 16}, split="dev", shuffle=False).as_numpy_iterator())
    finally:
        S.register_task(spec, world["root"], world["vocab"], allow_samples=True)


# ----------------------------------------------------------------- a seqio user's own Task


def _user_task(path, vocab):
    """Written as a seqio user would: a TextLineDataSource over a TSV, a parsing preprocessor,
    seqio's tokenize, and the classification features on XLMRVocabulary."""

    @seqio.map_over_dataset
    def parse(line):
        premise, hypothesis, label = tf.io.decode_csv(
            line, record_defaults=["", "", ""], field_delim="\t", use_quote_delim=False)
        labels = tf.constant(list(readers.NLI_LABELS))
        index = tf.argmax(tf.cast(labels == label, tf.int32), output_type=tf.int32)
        return {"inputs": premise, "inputs_b": hypothesis, "targets": index}

    features = {"inputs": seqio.Feature(vocab, add_eos=False),
                "inputs_b": seqio.Feature(vocab, add_eos=False),
                "targets": seqio.Feature(seqio.PassThroughVocabulary(0), add_eos=False, rank=0)}
    seqio.TaskRegistry.remove("user_nli")
    return seqio.TaskRegistry.add(
        "user_nli", source=seqio.TextLineDataSource({"train": str(path)}),
        preprocessors=[parse, seqio.preprocessors.tokenize], output_features=features)


def test_a_users_seqio_task_mixes_with_a_project_task(world, tmp_path):
    words = [chr(97 + i // 26) + chr(97 + i % 26) for i in range(30)]  # digits would be <unk>
    lines = [f"premise {w}\thypothesis {w}\t{readers.NLI_LABELS[i % 3]}"
             for i, w in enumerate(words)]
    (tmp_path / "user.tsv").write_text("\n".join(lines) + "\n")
    user = _user_task(tmp_path / "user.tsv", xlmr_vocabulary(world["vocab"].model_file))
    assert S.seqio_task_kind("user_nli") == "classification"
    seqio.MixtureRegistry.remove("user_nli+mnli")
    mixture = seqio.MixtureRegistry.add(
        "user_nli+mnli", [("user_nli", 1.0), ("mnli.en", 1.0)])
    assert S.mixes_per_example(mixture) and mixture.get_rate(user) == 1.0
    tok = world["tok"]
    users = {tuple(tok.encode_pair(*line.split("\t")[:2], max_length=24)): i % 3
             for i, line in enumerate(lines)}
    mnli = {tuple(tok.encode_pair(e["text_a"], e["text_b"], max_length=24))
            for e in PL.sources.read(T.get_task("mnli.en"), "train", world["root"],
                                     allow_samples=True)}
    seen = collections.Counter()
    for task, batch in S.seqio_batches("user_nli+mnli", sequence_length=24, batch_size=8,
                                       seed=0, num_epochs=1):
        assert task == "user_nli+mnli" and batch["input_ids"].shape == (8, 24)
        for ids, mask, label, real in zip(batch["input_ids"], batch["attention_mask"],
                                          batch["labels"], batch["example_mask"], strict=True):
            if not real:
                continue
            row = tuple(ids[: mask.sum()])
            if row in users:
                assert label == users[row]
                seen["user"] += 1
            else:
                assert row in mnli
                seen["mnli"] += 1
    assert seen["user"] > 0 and seen["mnli"] > 0
    # the user's Task through our converter directly
    converted = C.ClassificationConverter()(
        user.get_dataset({"inputs": 24}, shuffle=False), {"inputs": 24})
    first = next(converted.as_numpy_iterator())
    assert tuple(first["input_ids"][: first["attention_mask"].sum()]) == next(iter(users))

