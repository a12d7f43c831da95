"""The prepare command without network: --dry-run, checksum verification and atomic download with
file:// URLs, and the release-format converters on archives built from the real samples."""

import hashlib
import io
import json
import tarfile
import zipfile

import pytest

from xstilts.data import prepare
from xstilts.data import readers as r
from xstilts.data import tasks as T


def test_dry_run_lists_every_file_and_fetches_nothing(tmp_path, capsys):
    assert prepare.main(["--data_dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "xquad.th.json" in out and "tatoeba.jpn-eng.jpn" in out and "XNLI-1.0.zip" in out
    assert "XNLI-MT-1.0.zip" in out and "tydiqa.translate.train.en-sw.json" in out
    assert "cc-100/zh-Hans.txt.xz -> " in out and "mlm/zh.txt" in out
    # every URL pin, XTREME's XQuAD languages (no ro), Tatoeba
    assert out.count("sha256 pinned") == len(prepare.URL_SHA256) + 11 + 72
    assert out.count("slice sha256 on first use (first 100000 lines)") == 40  # CC-100 slices
    assert "anli_v1.0.zip -> " in out
    assert "AmazonPhotos.zip" in out and "[manual:" in out
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        prepare.main(["--data_dir", str(tmp_path), "--only", "nope", "--dry-run"])


def test_pinned_checksums_match_the_real_samples(shared_data):
    for name in ("xquad.zh.json", "tatoeba.tha-eng.tha"):
        relative = f"xquad/{name}" if name.startswith("xquad") else f"tatoeba/v1/{name}"
        digest = hashlib.sha256(shared_data(relative).read_bytes()).hexdigest()
        assert prepare.SHA256[name] == digest


def test_fetch_verifies_checksums_and_leaves_nothing_half_written(tmp_path):
    source = tmp_path / "upstream.txt"
    source.write_text("hello\n")
    good = hashlib.sha256(b"hello\n").hexdigest()
    root = tmp_path / "data"
    lock: dict = {}
    ok = prepare.Resource("demo", source.as_uri(), "demo/hello.txt", sha256=good)
    assert prepare.fetch(ok, root, lock).read_text() == "hello\n"
    assert lock[source.as_uri()] == good
    bad = prepare.Resource("demo", source.as_uri(), "demo/bad.txt", sha256="0" * 64)
    with pytest.raises(prepare.ChecksumMismatch, match="checksum mismatch .* was not kept"):
        prepare.fetch(bad, root, lock)
    assert sorted(p.name for p in (root / "demo").iterdir()) == ["hello.txt"]
    # trust on first use: a later change upstream is caught by the lock
    unpinned = prepare.Resource("demo", source.as_uri(), "demo/tofu.txt")
    prepare.fetch(unpinned, root, lock)
    source.write_text("changed\n")
    (root / "demo/tofu.txt").unlink()
    with pytest.raises(ValueError, match="checksum mismatch"):
        prepare.fetch(unpinned, root, lock)
    manual = prepare.Resource("ccg", "", "ccg/ccg.train", manual="place it", manual_only=True)
    with pytest.raises(FileNotFoundError, match="ccg.train is missing; place it"):
        prepare.fetch(manual, root, lock)


def test_xnli_and_pawsx_converters(shared_data, tmp_path):
    archive = tmp_path / "XNLI-1.0.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for split in ("dev", "test"):
            sample = shared_data(f"xnli/original_format_sample/xnli.{split}.tsv")
            z.writestr(f"XNLI-1.0/xnli.{split}.tsv", sample.read_bytes())
    prepare._xnli(archive, tmp_path)
    converted = list(r.read_xtreme_pair_tsv(tmp_path / "xnli/dev-ar.tsv"))
    assert [e["label"] for e in converted] == ["neutral", "contradiction"]
    assert T.get_task("xnli.ar").num_examples("test", tmp_path) == 2
    assert (tmp_path / "xnli/dev-de.tsv").read_text() == ""  # no German rows in the sample
    x_final = tmp_path / "x-final.tar.gz"
    with tarfile.open(x_final, "w:gz") as tar:
        for lang in T.LANGUAGES["pawsx"]:
            sample = "en" if lang == "en" else "de"
            for name in ("dev_2k.tsv", "test_2k.tsv", "train.tsv", "translated_train.tsv"):
                if (name == "train.tsv") != (lang == "en") and name.endswith("train.tsv"):
                    continue
                data = shared_data(f"pawsx/original_format_sample/{sample}/{name}").read_bytes()
                info = tarfile.TarInfo(f"x-final/{lang}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    prepare._pawsx(x_final, tmp_path)
    train = list(r.read_xtreme_pair_tsv(tmp_path / "pawsx/train-en.tsv", r.BINARY_LABELS))
    release = list(
        r.read_pawsx_original_tsv(shared_data("pawsx/original_format_sample/en/train.tsv"))
    )
    assert [(e["text_a"], e["label"]) for e in train] == [
        (e["text_a"], e["label"]) for e in release
    ]
    # the release's translated train sets, byte for byte where the tables read them
    translated = shared_data("pawsx/original_format_sample/de/translated_train.tsv").read_bytes()
    for lang in ("de", "ja", "zh"):
        assert (tmp_path / f"pawsx/x-final/{lang}/translated_train.tsv").read_bytes() == translated
    assert not (tmp_path / "pawsx/x-final/en").exists()


def test_tydiqa_split_by_language(shared_data, tmp_path):
    prepare._tydiqa_split("train")(
        shared_data("tydiqa/original_format_sample/tydiqa-goldp-v1.1-train.json"), tmp_path
    )
    folder = tmp_path / "tydiqa/tydiqa-goldp-v1.1-train"
    sizes = {
        path.name.split(".")[2]: len(json.loads(path.read_text())["data"])
        for path in folder.glob("*.json")
    }
    assert sizes["fi"] == 2 and sum(sizes.values()) == 2
    fi = list(r.read_squad_json(folder / "tydiqa.goldp.fi.train.json"))
    assert fi[0]["question"] == "Milloin Charles Fort syntyi?"
    assert T.get_task("tydiqa.fi").num_examples("train", tmp_path) == 2
