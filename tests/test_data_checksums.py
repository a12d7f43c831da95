"""Checksums for every download (issue 14 item 9) and the new prepare entries (item 7), without
network: pins and their sources, a mismatch that stops and leaves every old file in place,
interrupted downloads that leave nothing half-written, XNLI-MT-1.0 / TyDiQA translate-train /
PAWS-X translated train where the tables read them, and CC-100 slices cut from a local .xz."""

import hashlib
import io
import json
import lzma
import random
import re
import zipfile
from pathlib import Path

import pytest

from xstilts.data import checksums, prepare
from xstilts.data import readers as r

LAYOUTS = Path(__file__).parent / "fixtures" / "release_layouts"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    """Temporary files of an interrupted download or slice."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".tmp")))


class _Stream(io.BytesIO):
    """A download that yields ``data`` and, when ``fail_after`` is set, dies after that many
    bytes; ``consumed`` counts what the reader took."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        super().__init__(data)
        self.fail_after, self.consumed = fail_after, 0

    def read(self, size: int | None = -1) -> bytes:
        if self.fail_after is not None and self.consumed >= self.fail_after:
            raise ConnectionResetError("connection lost mid-download")
        chunk = super().read(size if size is not None and size >= 0 else -1)
        self.consumed += len(chunk)
        return chunk

    read1 = read


def _serve(monkeypatch, files: dict[str, bytes], fail_after: int | None = None) -> dict:
    """Monkeypatch the downloader: URL -> bytes; returns the streams opened, by URL."""
    opened: dict[str, _Stream] = {}

    def open_url(url: str) -> _Stream:
        if url not in files:
            raise AssertionError(f"unexpected download {url}")
        opened[url] = _Stream(files[url], fail_after)
        return opened[url]

    monkeypatch.setattr(prepare, "open_url", open_url)
    return opened


# ----------------------------------------------------------------------------------- pins


def test_every_download_is_pinned_or_listed_as_trust_on_first_use():
    items = prepare.resources()
    urls = {res.url for res in items}
    for url, pin in checksums.URL_SHA256.items():
        assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256), url
        # a source names the repository, the path and the commit it was read at
        assert re.fullmatch(r"[\w.-]+/[\w.-]+ \S+@[0-9a-f]{40}", pin.source), pin.source
        assert url in urls, f"stale pin: prepare no longer fetches {url}"
    unpinned = {res.dataset for res in items if res.sha256 is None}
    assert unpinned == set(checksums.TRUST_ON_FIRST_USE) | {"ccg"}  # ccg: licensed, local only
    assert all(res.pin_source for res in items if res.sha256)
    by_url = {res.url: res for res in items}
    assert by_url["https://dl.fbaipublicfiles.com/XNLI/XNLI-MT-1.0.zip"].sha256.startswith("f7325")
    xquad = by_url[next(u for u in urls if u.endswith("xquad.th.json"))]
    assert xquad.sha256 == checksums.SHA256["xquad.th.json"] and "samples" in xquad.pin_source


def test_the_new_sources_land_where_the_release_layouts_put_them():
    items = prepare.resources(mlm_lines=7)
    targets = {res.target: res for res in items}
    tydiqa = targets["tydiqa/translate-train/tydiqa.translate.train.en-sw.json"]
    assert tydiqa.url == (
        "https://storage.googleapis.com/xtreme_translations/TyDiQA-GoldP/translate-train/"
        "tydiqa.translate.train.en-sw.json"
    )
    assert tydiqa.sha256 == "791eca4d59c67827108997d4a5b4949055cd2e358ff8417d4d82081f960cc692"
    fixture = "tydiqa/translate-train/tydiqa.translate.train.en-sw.json"
    assert (LAYOUTS / fixture).is_file() and fixture in targets
    langs = sorted(t.split("en-")[1][:2] for t in targets if "tydiqa.translate.train" in t)
    assert langs == ["ar", "bn", "fi", "id", "ko", "ru", "sw", "te"]  # TyDiQA minus English
    mlm = [res for res in items if res.dataset == "mlm"]
    assert {res.target for res in mlm} == {f"mlm/{lang}.txt" for lang in prepare.XTREME_LANGUAGES}
    assert len(mlm) == 40 and all(res.lines == 7 for res in mlm)
    assert targets["mlm/zh.txt"].url == "https://data.statmt.org/cc-100/zh-Hans.txt.xz"
    assert targets["mlm/sw.txt"].lock_key == "https://data.statmt.org/cc-100/sw.txt.xz#lines=7"


def test_prepare_writes_every_translated_and_mlm_file_the_tables_read():
    from xstilts.data.tables import intermediate as rows

    produced = {res.target for res in prepare.resources()}
    produced |= set(prepare.XNLI_MT.values()) | set(prepare.PAWSX_TRANSLATED_TRAIN.values())
    translated = [row for row in rows.ROWS if row.source == "translate-train"] + [rows.MLM]
    assert {row.dataset for row in translated} >= {"mnli_mt", "tydiqa_tt", "pawsx_tt", "mlm"}
    for row in translated:
        for lang in row.languages:
            paths = [path.format(lang=lang) for path in row.splits["train"]]
            assert produced & set(paths), f"{row.dataset}.{lang}: prepare writes none of {paths}"


# ----------------------------------------------------------------- mismatch and atomicity


def test_a_mismatch_stops_with_both_hashes_and_leaves_the_old_files(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    old = b"premise\thypo\tlabel\nold\tfile\tneutral\n"
    target = root / "XNLI-MT-1.0/multinli/multinli.train.de.tsv"
    target.parent.mkdir(parents=True)
    target.write_bytes(old)  # extracted by an earlier run
    tampered = _zip({"XNLI-MT-1.0/multinli/multinli.train.de.tsv": b"tampered\n"})
    url = "https://dl.fbaipublicfiles.com/XNLI/XNLI-MT-1.0.zip"
    _serve(monkeypatch, {url: tampered})
    pin = checksums.URL_SHA256[url].sha256
    res = next(res for res in prepare.resources() if res.url == url)
    with pytest.raises(prepare.ChecksumMismatch) as error:
        prepare.fetch(res, root, {})
    assert pin in str(error.value) and _sha(tampered) in str(error.value)
    assert target.read_bytes() == old  # post-processing never ran on unverified bytes
    assert not (root / "downloads/XNLI-MT-1.0.zip").exists() and _leftovers(root) == []
    # the command stops there: the next dataset is not fetched, the lock is still written
    code = prepare.main(["--data_dir", str(root), "--only", "xnli_mt,tydiqa"])
    assert code == 2
    assert "STOPPED checksum mismatch" in capsys.readouterr().err
    assert json.loads((root / prepare.LOCK_FILE).read_text()) == {}


def test_an_existing_file_with_the_wrong_hash_is_left_in_place(tmp_path):
    source = tmp_path / "upstream.json"
    source.write_bytes(b"{}")
    root = tmp_path / "data"
    (root / "demo").mkdir(parents=True)
    (root / "demo/x.json").write_bytes(b"local edit")
    res = prepare.Resource("demo", source.as_uri(), "demo/x.json", sha256=_sha(b"{}"))
    with pytest.raises(prepare.ChecksumMismatch, match=f"got {_sha(b'local edit')}.*left in"):
        prepare.fetch(res, root, {})
    assert (root / "demo/x.json").read_bytes() == b"local edit"


def test_an_interrupted_download_leaves_nothing_half_written(tmp_path, monkeypatch):
    url = "https://example.invalid/big.json"
    _serve(monkeypatch, {url: b"x" * (3 << 20)}, fail_after=1 << 20)
    root = tmp_path / "data"
    lock: dict = {}
    with pytest.raises(ConnectionResetError):
        prepare.fetch(prepare.Resource("demo", url, "demo/big.json"), root, lock)
    assert list((root / "demo").iterdir()) == [] and lock == {}


def test_a_missing_archive_member_names_the_member(tmp_path):
    archive = tmp_path / "XNLI-MT-1.0.zip"
    archive.write_bytes(_zip({"XNLI-MT-1.0/multinli/multinli.train.en.tsv": b"x\n"}))
    with pytest.raises(r.DataFormatError, match=r"XNLI-MT-1.0.zip: no member 'XNLI-MT-1.0/mul"):
        prepare._members(prepare.XNLI_MT)(archive, tmp_path)
    assert _leftovers(tmp_path) == []


def test_xnli_mt_members_land_where_the_table_reads_them(tmp_path):
    member = "XNLI-MT-1.0/multinli/multinli.train.de.tsv"
    release = (LAYOUTS / member).read_bytes()
    archive = tmp_path / "XNLI-MT-1.0.zip"
    archive.write_bytes(_zip({m: release for m in prepare.XNLI_MT}))
    root = tmp_path / "data"
    res = prepare.Resource("xnli_mt", archive.as_uri(), "downloads/XNLI-MT-1.0.zip", post=None)
    prepare.fetch(res, root, {})
    prepare._members(prepare.XNLI_MT)(root / res.target, root)
    assert (root / member).read_bytes() == release
    assert len(list((root / "XNLI-MT-1.0/multinli").iterdir())) == 15
    assert list(r.read_xnli_mt_tsv(root / member))[0]["label"] == "contradiction"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


# ------------------------------------------------------------------------ CC-100 slices

_NOISE = random.Random(14)
CORPUS = "".join(  # documents separated by blank lines, as in CC-100; random, so it hardly packs
    f"Sentensi ya {n}: {_NOISE.getrandbits(256):064x}.\n" + ("\n" if n % 3 == 0 else "")
    for n in range(6000)
).encode()
COMPRESSED = lzma.compress(CORPUS, preset=0)


def _slice_resource(url: str, lines: int) -> prepare.Resource:
    return prepare.Resource("mlm", url, "mlm/sw.txt", lines=lines)


def test_mlm_slice_is_capped_streamed_and_locked(tmp_path, monkeypatch):
    url = "https://data.statmt.org/cc-100/sw.txt.xz"
    compressed = COMPRESSED
    opened = _serve(monkeypatch, {url: compressed})
    root, lock = tmp_path / "data", {}
    path = prepare.fetch(_slice_resource(url, 100), root, lock)
    text = path.read_text(encoding="utf-8")
    assert len([line for line in text.splitlines() if line.strip()]) == 100
    assert CORPUS.decode().startswith(text) and text.splitlines()[-1].startswith("Sentensi ya 99:")
    assert opened[url].consumed < len(compressed) / 4  # a bounded slice, not the whole file
    assert lock == {f"{url}#lines=100": _sha(text.encode())}
    assert len(list(r.read_text_lines(path))) == 100
    # trust on first use: the same cap verifies, a changed upstream is a mismatch (file kept)
    assert prepare.fetch(_slice_resource(url, 100), root, lock) == path
    path.unlink()
    _serve(monkeypatch, {url: lzma.compress(b"changed upstream\n" + CORPUS[:4000])})
    with pytest.raises(prepare.ChecksumMismatch, match=r"sw.txt.xz \(first 100 lines\)"):
        prepare.fetch(_slice_resource(url, 100), root, lock)
    assert not path.exists() and _leftovers(root) == []
    # another cap is another slice: cut again, replacing the file atomically
    _serve(monkeypatch, {url: compressed})
    prepare.fetch(_slice_resource(url, 100), root, lock)
    prepare.fetch(_slice_resource(url, 10), root, lock)
    assert len(list(r.read_text_lines(path))) == 10 and set(lock) == {
        f"{url}#lines=100",
        f"{url}#lines=10",
    }
    # a file prepare did not cut (the user's own MLM text) is never replaced
    own = root / "mlm/own.txt"
    own.write_text("my own corpus\n")
    prepare.fetch(prepare.Resource("mlm", url + "?other", "mlm/own.txt", lines=5), root, lock)
    assert own.read_text() == "my own corpus\n" and f"{url}?other#lines=5" not in lock


def test_mlm_slice_from_a_local_xz_file_and_the_command_line(tmp_path, monkeypatch):
    xz = tmp_path / "yo.txt.xz"
    xz.write_bytes(lzma.compress("Ẹ kú àárọ̀.\n\nBáwo ni?\nÓ dàbọ̀.\n".encode()))
    monkeypatch.setattr(prepare, "CC100", tmp_path.as_uri())
    monkeypatch.setattr(prepare, "XTREME_LANGUAGES", ("yo",))
    root = tmp_path / "data"
    assert prepare.main(["--data_dir", str(root), "--only", "mlm", "--mlm_lines", "2"]) == 0
    assert (root / "mlm/yo.txt").read_text(encoding="utf-8") == "Ẹ kú àárọ̀.\n\nBáwo ni?\n"
    assert f"{xz.as_uri()}#lines=2" in json.loads((root / prepare.LOCK_FILE).read_text())
    with pytest.raises(SystemExit):
        prepare.main(["--data_dir", str(root), "--only", "mlm", "--mlm_lines", "0"])


def test_mlm_slice_rejects_non_utf8_naming_file_and_line(tmp_path):
    xz = tmp_path / "ur.txt.xz"
    xz.write_bytes(lzma.compress(b"line one\nline two\nbad \xff byte\nline four\n"))
    root = tmp_path / "data"
    old = root / "mlm/sw.txt"
    old.parent.mkdir(parents=True)
    old.write_text("previous slice\n")  # cut earlier with another cap: sliced again
    res = prepare.Resource("mlm", xz.as_uri(), "mlm/sw.txt", lines=10)
    with pytest.raises(r.DataFormatError, match=r"ur\.txt\.xz:3: byte 0xff at column 5"):
        prepare.fetch(res, root, {f"{xz.as_uri()}#lines=1": _sha(b"line one\n")})
    assert old.read_text() == "previous slice\n" and _leftovers(tmp_path) == []
    not_xz = tmp_path / "plain.txt.xz"
    not_xz.write_bytes(b"plain text, not xz\n")
    res = prepare.Resource("mlm", not_xz.as_uri(), "mlm/sw.txt", lines=10)
    with pytest.raises(r.DataFormatError, match=r"plain\.txt\.xz: expected an \.xz stream"):
        prepare.fetch(res, tmp_path / "fresh", {})
    assert not (tmp_path / "fresh/mlm/sw.txt").exists() and _leftovers(tmp_path) == []
