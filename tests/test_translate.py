"""python -m xstilts.translate with a tiny random NLLB checkpoint: the release layout, the
readers and registered tasks load it, the manifest, and a killed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, require_sample, shared_data_dir
from tests.nmt_reference import make_hf_nmt
from tests.translate_stand_in import UpperCase as _UpperCase
from xstilts.data import readers, sources, tasks

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random NLLB-layout checkpoint with its tokenizer files (the shared test spm model)."""
    folder = tmp_path_factory.mktemp("nllb")
    spm = str(require_sample("spm") / "test_model.model")
    tok = transformers.NllbTokenizer(vocab_file=spm)
    tok.save_pretrained(folder)
    make_hf_nmt("nllb", seed=2, eos_boost=0.3, vocab_size=len(tok)).save_pretrained(folder)
    return folder


def _run(args, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "xstilts.translate", *args], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def test_mnli_sample_to_release_layout(checkpoint, tmp_path):
    data = shared_data_dir()
    require_sample("english/mnli/glue_format")
    proc = _run(["--task", "mnli", "--languages", "yo,sw", "--data_dir", str(data),
                 "--output_dir", str(tmp_path), "--model", str(checkpoint), "--max_length", "10",
                 "--allow_samples", "--shard_size", "2"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "ex/s" in err or "ex_per_s" in err  # the progress bar with its rate
    english = list(sources.read(tasks.get_task("mnli.en"), "train", data, allow_samples=True))
    # sw has XTREME's release: ours goes under translate-train-ours/, the task mnli_ours.sw
    for lang, task, under in (("yo", "mnli.yo", ""), ("sw", "mnli_ours.sw",
                                                       "translate-train-ours/")):
        path = tmp_path / f"{under}xnli/translate-train/en-{lang}-translated.tsv"
        assert str(path) in out.splitlines()
        rows = list(readers.read_translate_train_tsv(path))
        assert [(r["text_a_en"], r["text_b_en"], r["label"]) for r in rows] == [
            (e["text_a"], e["text_b"], e["label"]) for e in english]
        assert all(r["text_a"] and r["text_b"] for r in rows)
        manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
        assert manifest["rows"] == len(english) and manifest["task"] == task
        assert manifest["decoding"]["num_beams"] == 4 and len(manifest["model_sha256"]) == 64
        assert manifest["truncated_sources_this_run"] == 0
        assert not path.with_name(path.name + ".parts").exists()
        assert [r["text_a"] for r in sources.read(tasks.get_task(task), "train", tmp_path)] \
            == [r["text_a"] for r in rows]
    assert not (tmp_path / "xnli/translate-train/en-sw-translated.tsv").exists()
    with pytest.raises(FileNotFoundError, match="python -m xstilts.data.prepare"):
        sources.resolve(tasks.get_task("mnli.sw"), "train", tmp_path)  # never ours


def test_rows_over_the_data_axis_of_every_local_device_translate_the_same(checkpoint):
    """The translator's 1-D ``data`` mesh over the 8 fake CPU devices (rows padded to a
    multiple of 8, params replicated) gives the same translations as one device, twice."""
    import jax

    from xstilts.decoding import DecodeSettings
    from xstilts.translate import Translator

    if jax.local_device_count() < 8:
        pytest.skip("needs the 8 fake CPU devices of conftest's XLA_FLAGS")
    lines = (require_sample("tatoeba/v1") / "tatoeba.deu-eng.eng").read_text().splitlines()
    texts = [lines[i] for i in range(11)] + [""]  # mixed lengths, 12 rows
    settings = DecodeSettings(num_beams=2, max_length=8)
    many = Translator(str(checkpoint), settings, batch_size=4)
    one = Translator(str(checkpoint), settings, batch_size=4, devices=jax.local_devices()[:1])
    assert many.row_sharding.mesh.shape == {"data": 8} and one.row_sharding is None
    out = many.translate(texts, "en", "yo")
    assert out == one.translate(texts, "en", "yo") == many.translate(texts, "en", "yo")
    assert any(out) and len(set(out)) > 1  # real, differing outputs


def _glue_mnli(path, n):
    lines = (require_sample("tatoeba/v1") / "tatoeba.deu-eng.eng").read_text().splitlines()
    labels = ("entailment", "neutral", "contradiction")
    rows = ["index\tsentence1\tsentence2\tgold_label"] + [
        f"{i}\t{lines[2 * i]}\t{lines[2 * i + 1]}\t{labels[i % 3]}" for i in range(n)]
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_killed_run_resumes_without_duplicates_or_gaps(checkpoint, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    _glue_mnli(data / "mnli/train.tsv", 24)
    args = ["--task", "mnli", "--languages", "yo", "--data_dir", str(data), "--output_dir",
            str(out), "--model", str(checkpoint), "--max_length", "8", "--shard_size", "3",
            "--batch_size", "4", "--no_progress"]
    parts = out / "xnli/translate-train/en-yo-translated.tsv.parts"
    proc = _run(args)
    deadline = time.time() + 240
    while not (parts / "shard-00001.txt").exists() and proc.poll() is None:
        assert time.time() < deadline, "no shard written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    final = out / "xnli/translate-train/en-yo-translated.tsv"
    assert not final.exists(), "the run finished before it was killed: nothing resumed"
    done = sorted(p.name for p in parts.glob("shard-*.txt"))
    assert 2 <= len(done) < 8 and not list(parts.glob(".*tmp*"))
    proc = _run(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    manifest = json.loads(final.with_name(final.name + ".manifest.json").read_text())
    assert manifest["translated_this_run"] == 24 - 3 * len(done)
    rows = list(readers.read_translate_train_tsv(final))
    english = list(readers.read_mnli(data / "mnli/train.tsv"))
    assert [(r["text_a_en"], r["text_b_en"]) for r in rows] == [
        (e["text_a"], e["text_b"]) for e in english]
    # the same as one uninterrupted run
    fresh = tmp_path / "fresh"
    proc = _run([*args[:7], str(fresh), *args[8:]])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert (fresh / "xnli/translate-train/en-yo-translated.tsv").read_text() == final.read_text()


def test_changed_settings_refuse_old_shards_and_unknown_language(checkpoint, tmp_path):
    from xstilts.translate import main

    data, out = tmp_path / "data", tmp_path / "out"
    _glue_mnli(data / "mnli/train.tsv", 3)
    parts = out / "xnli/translate-train/en-yo-translated.tsv.parts"
    parts.mkdir(parents=True)
    (parts / "settings.json").write_text(json.dumps({"model": "other"}))
    base = ["--task", "mnli", "--data_dir", str(data), "--output_dir", str(out), "--model",
            str(checkpoint), "--max_length", "6", "--no_progress"]
    with pytest.raises(ValueError, match=r"\.parts: unfinished shards of another run"):
        main([*base, "--languages", "yo"])
    with pytest.raises(ValueError, match="--languages xx: .*language 'xx'"):
        main([*base, "--languages", "xx"])
    assert not (out / "xnli/translate-train/en-xx-translated.tsv").exists()


def test_the_command_line_reports_its_errors_in_one_line(checkpoint, tmp_path, capsys):
    from xstilts.translate import console_main

    data, out = tmp_path / "data", tmp_path / "out"
    _glue_mnli(data / "mnli/train.tsv", 3)
    base = ["--task", "mnli", "--data_dir", str(data), "--output_dir", str(out), "--no_progress"]
    assert console_main([*base, "--languages", "xx", "--model", str(checkpoint)]) == 1
    assert console_main([*base, "--languages", "yo", "--model", str(tmp_path / "none")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("python -m xstilts.translate: TranslateInputError: --languages "
                               "xx: ") and "language 'xx'" in lines[0]
    assert lines[1] == (f"python -m xstilts.translate: FileNotFoundError: {tmp_path / 'none'}: "
                        f"no such folder (and not a Hugging Face hub id)")
    assert len(lines) == 2 and not out.exists()


def test_pawsx_to_the_release_layout(checkpoint, tmp_path):
    from xstilts.decoding import DecodeSettings
    from xstilts.translate import Translator, translate_task

    data = tmp_path / "data"
    (data / "pawsx").mkdir(parents=True)
    lines = (require_sample("pawsx/xtreme_format") / "dev-en.tsv").read_text().splitlines()[:5]
    (data / "pawsx/train-en.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    translator = Translator(str(checkpoint), DecodeSettings(num_beams=1, max_length=6),
                            max_source_length=12)
    (path,) = translate_task("pawsx", ["de"], str(data), str(tmp_path / "out"), translator,
                             model_name="tiny", progress=False)
    assert path.read_text().startswith("id\tsentence1\tsentence2\tlabel\n")
    manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    longer = sum(len(translator.tokenizer.encode_source(t, "eng_Latn")) > 12
                 for line in lines for t in line.split("\t")[:2])
    assert manifest["truncated_sources_this_run"] == longer > 0
    english = list(readers.read_xtreme_pair_tsv(data / "pawsx/train-en.tsv",
                                                labels=readers.BINARY_LABELS))
    rows = list(readers.read_pawsx_original_tsv(path))
    assert [(r["id"], r["label"]) for r in rows] == [(e["id"], e["label"]) for e in english]
    assert path == tmp_path / "out/translate-train-ours/pawsx/x-final/de/translated_train.tsv"
    assert manifest["task"] == "pawsx_tt_ours.de"
    # ours of a language the release has: pawsx_tt_ours.de, never the official pawsx_tt.de
    assert len(list(sources.read(tasks.get_task("pawsx_tt_ours.de"), "train",
                                 tmp_path / "out"))) == 5
    with pytest.raises(FileNotFoundError, match="pawsx/x-final/de/translated_train.tsv"):
        sources.resolve(tasks.get_task("pawsx_tt.de"), "train", tmp_path / "out")


def test_official_release_and_ours_never_mix(tmp_path):
    from xstilts.translate import translate_task

    data, relative = tmp_path / "d", "xnli/translate-train/en-bg-translated.tsv"
    _glue_mnli(data / "mnli/train.tsv", 3)
    (data / relative).parent.mkdir(parents=True)
    release = (require_sample("xnli/translate_train_sample") / "en-bg-translated.tsv").read_text()
    (data / relative).write_text(release, encoding="utf-8")

    def translate(out, **kwargs):
        return translate_task("mnli", ["bg"], str(data), str(out), _UpperCase(tmp_path),
                              model_name="upper", progress=False, **kwargs)

    # (a) onto the release's path only when asked, and never over the release itself
    with pytest.raises(FileExistsError, match=f"{data / relative}: the official release of "
                       r"mnli\.bg is there.*drop --at_release_path.*task mnli_ours\.bg"):
        translate(data, at_release_path=True)
    assert sorted(p.name for p in (data / relative).parent.iterdir()) == [
        "en-bg-translated.tsv"] and not (data / "translate-train-ours").exists()
    (ours,) = translate(data)  # the default: beside the release
    assert ours == data / "translate-train-ours" / relative
    assert translate(data / "translate-train-ours") == [ours]  # that folder is not doubled
    assert (data / relative).read_text() == release
    official = list(sources.read(tasks.get_task("mnli.bg"), "train", data))
    assert [r["text_a"] for r in official] == [
        r["text_a"] for r in readers.read_translate_train_tsv(data / relative)]
    english = list(readers.read_mnli(data / "mnli/train.tsv"))
    assert [r["text_a"] for r in sources.read(tasks.get_task("mnli_ours.bg"), "train", data)] \
        == [e["text_a"].upper() for e in english]
    # (b) ours at the release's path (asked for, no release there): the official task refuses it
    other = tmp_path / "o"
    (at_release,) = translate(other, at_release_path=True)
    assert at_release == other / relative
    with pytest.raises(readers.DataFormatError,
                       match=f"{at_release}: our translation .* read it as the task mnli_ours.bg"
                       r".*\(task 'mnli.bg', split 'train'\)"):
        list(sources.read(tasks.get_task("mnli.bg"), "train", other))
    assert len(list(sources.read(tasks.get_task("mnli_ours.bg"), "train", other))) == 3
