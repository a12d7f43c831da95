"""Issue 18 item 1: a bad batch or a bad data line names the task, split, file and example.

A PAWS-X train file written in XTREME's layout (``pawsx/train-en.tsv``: ``text_a<TAB>text_b<TAB>
label``) is read through the registered task ``pawsx.en`` by the native pipeline, as the
experiment reads it; ``train.train`` stops before any compile.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, require_sample
from xstilts import train, trainer
from xstilts.data import pipeline, sources, tasks
from xstilts.data.feature_converters import Batch, Origin, Provenance, without_keys
from xstilts.data.readers import DataFormatError
from xstilts.experiment.inputs import factory
from xstilts.models.xlmr import XLMRConfig
from xstilts.tokenization import XLMRTokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def tok():
    return XLMRTokenizer(require_sample("spm/test_model.model"))


def _pawsx_train(root, labels) -> str:
    """``root/pawsx/train-en.tsv`` with one line per label (line ``i + 1`` is example ``i``)."""
    path = root / "pawsx" / "train-en.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"the {WORDS[i % 12]} runs\tthe {WORDS[(i + 3) % 12]} sleeps\t{lab}\n"
                            for i, lab in enumerate(labels)))
    return str(path)


def test_an_unknown_label_in_a_real_file_names_task_split_file_and_line(tmp_path, tok):
    path = _pawsx_train(tmp_path, ["0", "1", "1", "0", "2", "1"])
    expected = (rf"^{re.escape(path)}:5: unknown label '2'; expected one of \['0', '1'\] "
                rf"\(task 'pawsx.en', split 'train'\)$")
    with pytest.raises(DataFormatError, match=expected) as raised:
        list(sources.read(tasks.get_task("pawsx.en"), "train", tmp_path))
    assert (raised.value.path, raised.value.line) == (path, 5)
    # the same error where training reads it: featurizing the split for a batcher
    with pytest.raises(DataFormatError, match=expected):
        pipeline.task_batcher("pawsx.en", "train", tok, batch_size=4, data_dir=tmp_path,
                              max_length=24)


def _native_factory(root, tok):
    """The experiment's batch factory (``experiment.inputs.factory``) over the native pipeline."""
    return factory(lambda shard, size: pipeline.task_batcher(
        "pawsx.en", "train", tok, batch_size=size, data_dir=root, max_length=24, seed=3,
        shard_info=shard))


def test_labels_out_of_range_name_task_split_file_and_example(tmp_path, tok):
    labels = ["0", "1", "0", "0", "1", "1", "0", "1", "0", "0", "1", "0"]
    path = _pawsx_train(tmp_path, labels)
    make = _native_factory(tmp_path, tok)
    first = next(make(shard_index=0, num_shards=1, batch_size=8, start_batch=0))
    assert "feature_index" not in first and first.provenance is not None  # kept on the host
    # Independently: the first row labelled 1 (out of range for NUM_LABELS=1) is the example
    # whose line in the file says 1; its id is its line number.
    row = int(np.argmax(first["labels"] == 1))
    index = first.provenance.example_indices[row]
    assert labels[index] == "1" and first.provenance.example_ids[row] == str(index + 1)
    line = open(path).read().splitlines()[index]
    assert line.endswith("\t1")
    with pytest.raises(trainer.BadBatchError) as raised:
        train.train(model_dir=str(tmp_path / "run"), model_config=XLMRConfig.tiny(),
                    total_steps=2, batch_size=8, train_batches=make,
                    task_type="classification", num_labels=1, progress=False)
    assert str(raised.value).startswith(
        f"train batch 0 (task 'pawsx.en', split 'train', file {path}, example index {index} "
        f"[id '{index + 1}']): classification labels hold ")
    assert "NUM_LABELS=1 expects labels in [0, 1)" in str(raised.value)
    assert not (tmp_path / "run").exists()  # stopped before anything was written


def test_a_multi_task_batch_error_names_the_example_and_the_head(tmp_path, tok):
    labels = ["1", "0", "1", "1", "0", "0", "1", "0"]
    path = _pawsx_train(tmp_path, labels)
    native = _native_factory(tmp_path, tok)

    def pairs(**kwargs):  # (task, batch) items, as a mixture's factory yields them
        for batch in native(**kwargs):
            yield "pawsx.en", batch

    first = next(native(shard_index=0, num_shards=1, batch_size=8, start_batch=0))
    index = first.provenance.example_indices[int(np.argmax(first["labels"] == 1))]
    assert labels[index] == "1"
    with pytest.raises(trainer.BadBatchError, match=(
            rf"^train batch 0 \(task 'pawsx.en', split 'train', file {re.escape(path)}, example "
            rf"index {index} \[id '{index + 1}'\], head 'paraphrase'\): classification labels "
            rf"hold \d+ value\(s\) \[1\]")):
        train.train(model_dir=str(tmp_path / "run"), model_config=XLMRConfig.tiny(),
                    total_steps=2, batch_size=8, train_batches=pairs, task_type=None,
                    num_labels=None, heads={"paraphrase": ("classification", 1)},
                    task_heads={"pawsx.en": "paraphrase"}, progress=False)


def test_token_ids_past_the_vocabulary_name_the_example(tmp_path, tok):
    """The tokenizer's ids against a model with a smaller vocabulary: the first row holding
    an id past it is named with its file and example."""
    path = _pawsx_train(tmp_path, ["0", "1"] * 4)
    batch = next(_native_factory(tmp_path, tok)(shard_index=0, num_shards=1, batch_size=8,
                                                start_batch=0))
    vocab = int(batch["input_ids"].max())  # the largest id is one past the vocabulary
    row = int(np.argwhere(batch["input_ids"] >= vocab)[0][0])
    index = batch.provenance.example_indices[row]
    with pytest.raises(trainer.BadBatchError, match=(
            rf"^eval batch 0 \(task 'pawsx.en', split 'train', file {re.escape(path)}, example "
            rf"index {index} \[id '{index + 1}'\]\): input_ids hold \d+ value\(s\) \[{vocab}\], "
            rf"the first at index \[{row}, ")):
        train._check_values(dict(batch), "eval batch 0", kind="classification", num_labels=2,
                            model_config=XLMRConfig.tiny(vocab_size=vocab),
                            source=batch.provenance.describe)


def test_example_indices_follow_the_split_across_parts_and_dropped_examples(tmp_path, tok):
    """``example_index`` is the example's place in the split as read: unchanged by cutting it
    into parts; training drops an unlabelled example without shifting the others' indices."""
    features = pipeline.featurize(
        tasks.get_task("pawsx.en"),
        [{"id": "a", "text_a": "x y", "text_b": "y", "label": "0"},
         {"id": "b", "text_a": "x", "text_b": "z", "label": None},  # no target: dropped
         {"id": "c", "text_a": "z", "text_b": "x", "label": "1"}],
        tok, 16, training=True, first_index=10)
    assert [(f["example_id"], f["example_index"]) for f in features] == [("a", 10), ("c", 12)]
    _pawsx_train(tmp_path, ["0", "1"] * 5)
    whole = pipeline.task_features("pawsx.en", "train", tok, data_dir=tmp_path, max_length=16)
    parts = pipeline.task_features("pawsx.en", "train", tok, data_dir=tmp_path, max_length=16,
                                   part_size=3)
    assert [f["example_index"] for f in parts] == [f["example_index"] for f in whole] == \
        list(range(10))


def test_a_batch_longer_than_the_positions_names_the_first_row_that_reaches_past_them():
    mask = np.zeros((3, 9), np.int32)
    mask[:, :4] = 1
    mask[2, :9] = 1  # only row 2 has tokens beyond position 8
    batch = {"input_ids": np.ones((3, 9), np.int32), "attention_mask": mask,
             "labels": np.zeros(3, np.int32)}
    with pytest.raises(trainer.BadBatchError, match=(
            r"^train batch 1 \(row 2 of the source\): sequences of length 9, but the model's "
            r"positions allow at most 8 tokens")):
        trainer.check_batch_values(batch, kind="classification", num_labels=2, vocab_size=10,
                                   where="train batch 1", max_length=8,
                                   source=lambda row: f"row {row} of the source")


def test_plain_batches_name_their_factory():
    def my_batches(**kwargs):
        raise AssertionError("not called")

    assert train._factory_source(my_batches)(3) == "from my_batches, which records no task or file"
    seqio_batches = train.SeqioBatches(mixture_or_task_name="xnli.en",
                                       task_feature_lengths={"inputs": 16})
    assert train._factory_source(seqio_batches)(0) == (
        "from SeqioBatches of 'xnli.en', which records no split, file or example")
    assert train._factory_source(None) is None


def test_without_keys_keeps_the_provenance_and_plain_batches_stay_plain():
    origin = Origin("pawsx.en", "train", ("/d/pawsx/train-en.tsv",))
    source = Provenance(origin, (4, -1), (7, None), ("8", None))
    batch = Batch({"input_ids": np.zeros((2, 2)), "feature_index": np.array([4, -1])}, source)
    kept = without_keys(batch, "feature_index")
    assert list(kept) == ["input_ids"] and kept.provenance is source
    assert source.describe(0) == ("task 'pawsx.en', split 'train', file /d/pawsx/train-en.tsv, "
                                  "example index 7 [id '8']")
    assert source.describe(1).endswith("row 1 (a padding row)")
    plain = without_keys({"input_ids": 1, "feature_index": 2}, "feature_index")
    assert plain == {"input_ids": 1} and type(plain) is dict


def test_a_batch_with_provenance_goes_into_jitted_code_like_its_dict():
    source = Provenance(Origin("pawsx.en", "train", ("/d/f.tsv",)), (0, 1), (3, 5), ("4", "6"))
    arrays = {"labels": np.array([1, 0], np.int32), "input_ids": np.arange(6).reshape(2, 3)}
    batch = Batch(arrays, source)
    total = jax.jit(lambda b: b["input_ids"].sum() * 10 + b["labels"].sum())(batch)
    assert int(total) == 151
    assert jax.tree.leaves(batch)[0] is arrays["input_ids"]  # keys sorted, as for a dict
    mapped = jax.tree.map(lambda x: x.shape, batch)
    assert mapped == {"input_ids": (2, 3), "labels": (2,)} and type(mapped) is dict


def test_num_labels_against_the_named_tasks_labels_is_a_set_up_error(tmp_path):
    batches = train.SeqioBatches(mixture_or_task_name="xnli.en",
                                 task_feature_lengths={"inputs": 16})
    with pytest.raises(ValueError, match=(
            r"^NUM_LABELS=2 but task 'xnli.en' has 3 labels \['contradiction', 'entailment', "
            r"'neutral'\]: set --gin.NUM_LABELS=3")):
        train.train(model_dir=str(tmp_path / "run"), model_config=XLMRConfig.tiny(),
                    total_steps=2, batch_size=8, train_batches=batches,
                    task_type="classification", num_labels=2, progress=False)
    assert not (tmp_path / "run").exists()
    # a mixture names the task of its own whose labels disagree
    with pytest.raises(ValueError, match=r"^NUM_LABELS=2 but task 'mnli.\w+' \(of mixture "
                                         r"'intermediate.mnli.multilingual'\) has 3 labels "):
        train._check_named_labels(train.SeqioBatches(
            mixture_or_task_name="intermediate.mnli.multilingual",
            task_feature_lengths={"inputs": 16}), "classification", 2)
    train._check_named_labels(batches, "classification", 3)  # agrees: no error
    train._check_named_labels(batches, None, None)  # None: the task's own count


def test_num_labels_disagreeing_with_the_task_stops_the_cli_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "xstilts.train", "--gin_file=models/xlmr_tiny.gin",
         "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
         "--gin.TRAIN_STEPS=2", "--gin.INIT_ENCODER_FROM=None",
         "--gin.MIXTURE_OR_TASK_NAME='xnli.en'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 16}",
         "--gin.TASK_TYPE='classification'", "--gin.NUM_LABELS=2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert ("LabelCountError: NUM_LABELS=2 but task 'xnli.en' has 3 labels ['contradiction', "
            "'entailment', 'neutral']") in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_an_unknown_label_in_a_real_file_stops_the_cli_naming_task_and_file(tmp_path):
    """``python -m xstilts.train`` on the registered ``pawsx.en`` (read by its seqio Task through
    ``sources.read``): one line naming file, line, task and split; nothing written."""
    pytest.importorskip("seqio")
    spm = require_sample("spm/test_model.model")
    path = _pawsx_train(tmp_path / "data", ["0", "1", "1", "0", "2", "1", "0", "1"])
    proc = subprocess.run(
        [sys.executable, "-m", "xstilts.train", "--gin_file=models/xlmr_tiny.gin",
         "--gin_file=runs/finetune.gin", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
         "--gin.TRAIN_STEPS=2", "--gin.INIT_ENCODER_FROM=None", "--gin.BATCH_SIZE=8",
         "--gin.MIXTURE_OR_TASK_NAME='pawsx.en'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 16}",
         f"--gin.VOCABULARY='{spm}'", f"--gin.DATA_DIR='{tmp_path / 'data'}'"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (f"DataFormatError: {path}:5: unknown label '2'; expected one of ['0', '1'] "
            f"(task 'pawsx.en', split 'train')") in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
