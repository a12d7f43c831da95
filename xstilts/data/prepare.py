"""Fetch the official releases into a data directory, verify checksums, and lay the files out as
the task tables (``data/tables/``) expect. Run it on a machine with internet; nothing else in
xstilts downloads.

    python -m xstilts.data.prepare --data_dir data --dry-run          # what would be fetched
    python -m xstilts.data.prepare --data_dir data --only xnli,xquad  # some datasets
    python -m xstilts.data.prepare --data_dir data --only mlm --mlm_lines 20000  # MLM slices
    python -m xstilts.data.prepare --data_dir data                    # everything

Checksums: every download whose exact URL has a published SHA-256 (TFDS ``checksums.tsv``, Hugging
Face ``dataset_infos.json``, ParlAI; ``checksums.URL_SHA256``, each with its source) or whose bytes
the project has seen (XQuAD, Tatoeba; ``checksums.SHA256``) is verified against that pin. The rest
(``checksums.TRUST_ON_FIRST_USE``: ANLI v1.0, the hand-placed PAN-X archive, the CC-100 slices) is
recorded on first use in ``<data_dir>/checksums.lock.json`` and verified on every later run, so a
changed upstream file is an error, not a silent change. A mismatch stops the run with both hashes
and leaves every file already in place untouched. Downloads and extracted files appear atomically
(temporary name, then rename); a failed run leaves no partial file behind and can be rerun.
Datasets with a manual step (PAN-X's AmazonPhotos.zip, licensed CCGbank) print what to do.

MLM text (``mlm/<lang>.txt``, the ``+mlm`` mixtures) is the first ``--mlm_lines`` non-empty lines
of CC-100's ``<lang>.txt.xz`` (https://data.statmt.org/cc-100/), decompressed while streaming: a
bounded slice is fetched, never the multi-GB file.

Labelled test sets: XTREME's own download scripts strip the test labels of XNLI, PAWS-X and UDPOS;
this command keeps them (XNLI-1.0 ``xnli.test.tsv``, PAWS-X ``x-final/<lang>/test_2k.tsv``, and the
UD v2.5 treebanks converted by ``xstilts.data.udpos`` exactly as XTREME converts them), so
``xnli/test-<lang>.tsv``, ``pawsx/test-<lang>.tsv`` and ``udpos/test-<lang>.tsv`` can be scored
(docs/labelled_test_data.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from xstilts.benchmark import TASK2LANGS as LANGUAGES
from xstilts.data import readers as r
from xstilts.data import udpos
from xstilts.data.checksums import (
    LASER_COMMIT,
    SHA256,
    TRUST_ON_FIRST_USE,
    URL_SHA256,
    XQUAD_COMMIT,
    XTREME_TRANSLATIONS,
)
from xstilts.data.tables.intermediate import SQUAD_TRANSLATE_TRAIN, XNLI_TRANSLATE_TRAIN
from xstilts.data.tables.xtreme import TATOEBA_ISO3

LOCK_FILE = "checksums.lock.json"
CC100 = "https://data.statmt.org/cc-100"
CC100_CODES = {"zh": "zh-Hans"}  # CC-100's file names that differ from the XTREME code
MLM_LINES = 100_000  # default --mlm_lines: non-empty lines per language
# every XTREME language (PAN-X covers them all): the languages of mlm/<lang>.txt
XTREME_LANGUAGES = tuple(sorted(set().union(*LANGUAGES.values())))
TYDIQA_TRANSLATE_TRAIN = tuple(lang for lang in LANGUAGES["tydiqa"] if lang != "en")
PROJECT_SAMPLES = "project samples (checksums.SHA256, byte-identical files in ../shared/data)"


@dataclasses.dataclass(frozen=True)
class Resource:
    """One file to fetch: ``url`` -> ``<data_dir>/<target>`` (archives go to ``downloads/``
    and ``post`` turns them into the task layout)."""

    dataset: str
    url: str
    target: str
    sha256: str | None = None
    post: Callable[[Path, Path], None] | None = None  # (downloaded file, data_dir)
    manual: str | None = None  # a step the user must do (printed; see ``manual_only``)
    manual_only: bool = False  # the file cannot be downloaded: the user places it
    pin_source: str | None = None  # where the pinned sha256 was published
    lines: int | None = None  # a streamed slice: the first ``lines`` non-empty lines of an .xz

    @property
    def lock_key(self) -> str:
        """The lock file's key: the URL, or the URL and line cap of a slice."""
        key = self.url or self.target
        return f"{key}#lines={self.lines}" if self.lines is not None else key


class ChecksumMismatch(ValueError):
    """A file's sha256 is not the pinned or locked one; nothing was replaced."""


class MissingMember(r.DataFormatError):
    """An archive lacks a member of the release layout."""


def open_url(url: str) -> IO[bytes]:
    """The download stream (monkeypatched in tests; ``file://`` URLs work too)."""
    return urllib.request.urlopen(url, timeout=60)


# ------------------------------------------------------------------------ post-processing


def _atomic_bytes(path: Path, data: bytes) -> None:
    _atomic_copy(path, io.BytesIO(data))


def _atomic_copy(path: Path, source: IO[bytes]) -> None:
    """Stream ``source`` to ``path`` through a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_pairs(path: Path, examples: Iterable[dict]) -> None:
    rows = [f"{e['text_a']}\t{e['text_b']}\t{e['label']}\n" for e in examples]
    _atomic_bytes(path, "".join(rows).encode())


def _members(mapping: dict[str, str]) -> Callable[[Path, Path], None]:
    """Copy archive members (zip or tar) to paths under the data dir, streaming."""

    def post(archive: Path, root: Path) -> None:
        for member, target in mapping.items():
            with _open_member(archive, member) as handle:
                _atomic_copy(root / target, handle)

    return post


def _missing(archive: Path, member: str, names: list[str]) -> MissingMember:
    shown = ", ".join(repr(name) for name in names[:5]) or "nothing"
    return MissingMember(
        archive,
        None,
        f"no member {member!r}, which the release layout has; the archive holds {shown}"
        f"{' ...' if len(names) > 5 else ''}",
    )


@contextlib.contextmanager
def _open_member(archive: Path, member: str) -> Iterator[IO[bytes]]:
    """A member of a zip or tar archive as a binary stream; a missing one is ``MissingMember``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                raise _missing(archive, member, z.namelist()) from None
            with z.open(info) as handle:
                yield handle
        return
    with tarfile.open(archive) as tar:
        try:
            handle = tar.extractfile(member)
        except KeyError:
            raise _missing(archive, member, tar.getnames()) from None
        if handle is None:
            raise MissingMember(archive, None, f"member {member!r} is not a file")
        with handle:
            yield handle


def _read_member(archive: Path, member: str) -> bytes:
    with _open_member(archive, member) as handle:
        return handle.read()


def _xnli(archive: Path, root: Path) -> None:
    """XNLI-1.0.zip: xnli.{dev,test}.tsv (all languages) -> xnli/{dev,test}-<lang>.tsv."""
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("dev", "test"):
            source = Path(tmp) / f"xnli.{split}.tsv"
            source.write_bytes(_read_member(archive, f"XNLI-1.0/xnli.{split}.tsv"))
            for lang in LANGUAGES["xnli"]:
                _write_pairs(
                    root / f"xnli/{split}-{lang}.tsv",
                    r.read_xnli_original_tsv(source, language=lang),
                )


def _pawsx(archive: Path, root: Path) -> None:
    """x-final.tar.gz -> pawsx/{train-en,dev-<lang>,test-<lang>}.tsv (XTREME's layout), and the
    release's machine-translated train sets as they are:
    pawsx/x-final/<lang>/translated_train.tsv."""
    with tempfile.TemporaryDirectory() as tmp:
        for lang in LANGUAGES["pawsx"]:
            for split, name in (
                ("dev", "dev_2k.tsv"),
                ("test", "test_2k.tsv"),
                ("train", "train.tsv"),
            ):
                if split == "train" and lang != "en":
                    continue
                source = Path(tmp) / f"{lang}-{name}"
                source.write_bytes(_read_member(archive, f"x-final/{lang}/{name}"))
                _write_pairs(root / f"pawsx/{split}-{lang}.tsv", r.read_pawsx_original_tsv(source))
    _members(PAWSX_TRANSLATED_TRAIN)(archive, root)


PAWSX_TRANSLATED_TRAIN = {
    f"x-final/{lang}/translated_train.tsv": f"pawsx/x-final/{lang}/translated_train.tsv"
    for lang in LANGUAGES["pawsx"]
    if lang != "en"
}
XNLI_MT = {  # XNLI's own machine translation of MNLI train (en: MNLI itself)
    f"XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv": (
        f"XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv"
    )
    for lang in LANGUAGES["xnli"]
}


def _tydiqa_split(kind: str) -> Callable[[Path, Path], None]:
    """TyDiQA-GoldP release json -> one SQuAD file per language (id prefix = language name)."""

    def post(source: Path, root: Path) -> None:
        document = json.loads(source.read_text(encoding="utf-8"))
        per_language: dict[str, list] = {lang: [] for lang in r.TYDIQA_LANGUAGES.values()}
        for article in document["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    lang = r.tydiqa_language_of(qa["id"])
                    per_language[lang].append(
                        {
                            "title": article.get("title", ""),
                            "paragraphs": [{"context": paragraph["context"], "qas": [qa]}],
                        }
                    )
        folder = "tydiqa-goldp-v1.1-train" if kind == "train" else "tydiqa-goldp-v1.1-dev"
        for lang, articles in per_language.items():
            data = json.dumps({"version": "TyDiQA-GoldP-1.1", "data": articles}, ensure_ascii=False)
            _atomic_bytes(root / f"tydiqa/{folder}/tydiqa.goldp.{lang}.{kind}.json", data.encode())

    return post


def _bucc(lang: str) -> Callable[[Path, Path], None]:
    def post(archive: Path, root: Path) -> None:
        for release, split in (("sample", "dev"), ("training", "test")):
            for suffix in (lang, "en", "gold"):
                member = f"bucc2018/{lang}-en/{lang}-en.{release}.{suffix}"
                try:
                    data = _read_member(archive, member)
                except MissingMember:
                    continue  # the test (training) gold is withheld by XTREME's protocol anyway
                _atomic_bytes(root / f"bucc2018/{lang}-en.{split}.{suffix}", data)

    return post


def _panx(archive: Path, root: Path) -> None:
    """AmazonPhotos.zip (panx_dataset/<lang>.tar.gz: train/dev/test) -> panx/<split>-<lang>.tsv."""
    with zipfile.ZipFile(archive) as z:
        for lang in LANGUAGES["panx"]:
            inner = tarfile.open(fileobj=io.BytesIO(z.read(f"panx_dataset/{lang}.tar.gz")))
            for split in ("train", "dev", "test"):
                handle = inner.extractfile(split)
                if handle is None:
                    raise KeyError(f"{archive}: panx_dataset/{lang}.tar.gz has no {split}")
                _atomic_bytes(root / f"panx/{split}-{lang}.tsv", handle.read())


def _udpos(languages: Iterable[str]) -> Callable[[Path, Path], None]:
    """ud-treebanks-v2.5.tgz -> udpos/{train,dev,test}-<lang>.tsv by XTREME's rule (``udpos.py``),
    the test split with its tags (XTREME's own script strips them)."""
    wanted = tuple(languages)

    def post(archive: Path, root: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            found = _udpos_members(archive, Path(tmp), wanted)
            missing = [lang for lang in wanted if lang not in found]
            if missing:
                raise r.DataFormatError(
                    archive,
                    None,
                    "expected members ud-treebanks-v2.x/<treebank>/<lang>_*.conllu "
                    f"for languages {missing}; found them for {sorted(found)}",
                )
            report = udpos.convert_treebanks(tmp, root / "udpos", wanted)
            for line in report.skipped:  # as in XTREME, whose conversion fails on these files
                print(f"udpos: skipped {line.replace(tmp, f'{archive}!')}", flush=True)

    return post


def _udpos_members(archive: Path, into: Path, languages: tuple[str, ...]) -> set[str]:
    """Extract the ``<release>/<treebank>/<lang>_*.conllu`` members of ``languages``."""
    found = set()
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if not (member.isfile() and len(parts) == 3 and parts[2].endswith(".conllu")):
                continue
            lang = udpos.language_of(parts[2])
            handle = tar.extractfile(member) if lang in languages else None
            if handle is not None:
                (into / parts[1]).mkdir(exist_ok=True)
                (into / parts[1] / parts[2]).write_bytes(handle.read())
                found.add(lang)
    return found


# -------------------------------------------------------------------------------- manifest


def _pinned(resource: Resource) -> Resource:
    """``resource`` with the sha256 published for its exact URL (``checksums.URL_SHA256``)."""
    if resource.sha256 is not None:
        return dataclasses.replace(resource, pin_source=resource.pin_source or PROJECT_SAMPLES)
    pin = URL_SHA256.get(resource.url)
    if pin is None:
        return resource
    return dataclasses.replace(resource, sha256=pin.sha256, pin_source=pin.source)


def _mlm(lines: int) -> list[Resource]:
    """CC-100 slices: the first ``lines`` non-empty lines of <lang>.txt.xz -> mlm/<lang>.txt."""
    return [
        Resource(
            "mlm",
            f"{CC100}/{CC100_CODES.get(lang, lang)}.txt.xz",
            f"mlm/{lang}.txt",
            lines=lines,
        )
        for lang in XTREME_LANGUAGES
    ]


def resources(mlm_lines: int = MLM_LINES) -> list[Resource]:
    """Every file ``prepare`` fetches, with its pinned sha256 where one is published."""
    out: list[Resource] = []
    add = out.append
    add(
        Resource(
            "xnli",
            "https://dl.fbaipublicfiles.com/XNLI/XNLI-1.0.zip",
            "downloads/XNLI-1.0.zip",
            post=_xnli,
        )
    )
    add(
        Resource(
            "xnli_mt",
            "https://dl.fbaipublicfiles.com/XNLI/XNLI-MT-1.0.zip",
            "downloads/XNLI-MT-1.0.zip",
            post=_members(XNLI_MT),
        )
    )
    for lang in XNLI_TRANSLATE_TRAIN:
        add(
            Resource(
                "mnli_translate_train",
                f"{XTREME_TRANSLATIONS}/XNLI/translate-train/en-{lang}-translated.tsv",
                f"xnli/translate-train/en-{lang}-translated.tsv",
            )
        )
    add(
        Resource(
            "pawsx",
            "https://storage.googleapis.com/paws/pawsx/x-final.tar.gz",
            "downloads/x-final.tar.gz",
            post=_pawsx,
        )
    )
    add(
        Resource(
            "udpos",
            "https://lindat.mff.cuni.cz/repository/xmlui/bitstream/handle/11234/1-3105/ud-treebanks-v2.5.tgz",
            "downloads/ud-treebanks-v2.5.tgz",
            post=_udpos(LANGUAGES["udpos"]),  # labelled test split: docs/labelled_test_data.md
        )
    )
    add(
        Resource(
            "panx",
            "https://www.amazon.com/clouddrive/share/d3KGCRCIYwhKJF0H3eWA26hjg2ZCRhjpEQtDL70FSBN",
            "downloads/AmazonPhotos.zip",
            post=_panx,
            manual_only=True,
            manual="the link is dead (google-research/xtreme#101): put AmazonPhotos.zip (rehosted "
            "e.g. by huggingface/datasets PR #2710) in <data_dir>/downloads/ and rerun",
        )
    )
    for lang in LANGUAGES["xquad"]:
        add(
            Resource(
                "xquad",
                f"https://raw.githubusercontent.com/google-deepmind/xquad/{XQUAD_COMMIT}/xquad.{lang}.json",
                f"xquad/xquad.{lang}.json",
                SHA256[f"xquad.{lang}.json"],
            )
        )
    add(
        Resource(
            "mlqa",
            "https://dl.fbaipublicfiles.com/MLQA/MLQA_V1.zip",
            "downloads/MLQA_V1.zip",
            post=_members(
                {
                    f"MLQA_V1/{s}/{s}-context-{g}-question-{g}.json": (
                        f"mlqa/MLQA_V1/{s}/{s}-context-{g}-question-{g}.json"
                    )
                    for s in ("dev", "test")
                    for g in LANGUAGES["mlqa"]
                }
            ),
        )
    )
    add(
        Resource(
            "tydiqa",
            "https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-train.json",
            "downloads/tydiqa-goldp-v1.1-train.json",
            post=_tydiqa_split("train"),
        )
    )
    add(
        Resource(
            "tydiqa",
            "https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-dev.json",
            "downloads/tydiqa-goldp-v1.1-dev.json",
            post=_tydiqa_split("dev"),
        )
    )
    for lang in TYDIQA_TRANSLATE_TRAIN:
        name = f"tydiqa.translate.train.en-{lang}.json"
        add(
            Resource(
                "tydiqa_translate_train",
                f"{XTREME_TRANSLATIONS}/TyDiQA-GoldP/translate-train/{name}",
                f"tydiqa/translate-train/{name}",
            )
        )
    for lang in LANGUAGES["bucc2018"]:
        for release in ("sample", "training"):
            add(
                Resource(
                    "bucc2018",
                    f"https://comparable.limsi.fr/bucc2018/bucc2018-{lang}-en.{release}-gold.tar.bz2",
                    f"downloads/bucc2018-{lang}-en.{release}-gold.tar.bz2",
                    post=_bucc(lang),
                )
            )
    for lang in LANGUAGES["tatoeba"]:
        iso = TATOEBA_ISO3[lang]
        for side in (iso, "eng"):
            name = f"tatoeba.{iso}-eng.{side}"
            add(
                Resource(
                    "tatoeba",
                    f"https://raw.githubusercontent.com/facebookresearch/LASER/{LASER_COMMIT}/data/tatoeba/v1/{name}",
                    f"tatoeba/v1/{name}",
                    SHA256[name],
                )
            )
    add(
        Resource(
            "mnli",
            "https://dl.fbaipublicfiles.com/glue/data/MNLI.zip",
            "downloads/MNLI.zip",
            post=_members(
                {"MNLI/train.tsv": "mnli/train.tsv", "MNLI/dev_matched.tsv": "mnli/dev_matched.tsv"}
            ),
        )
    )
    add(
        Resource(
            "qqp",
            "https://dl.fbaipublicfiles.com/glue/data/QQP-clean.zip",
            "downloads/QQP-clean.zip",
            post=_members({"QQP/train.tsv": "qqp/train.tsv", "QQP/dev.tsv": "qqp/dev.tsv"}),
        )
    )
    add(
        Resource(
            "snli",
            "https://nlp.stanford.edu/projects/snli/snli_1.0.zip",
            "downloads/snli_1.0.zip",
            post=_members(
                {
                    f"snli_1.0/snli_1.0_{s}.jsonl": f"snli/snli_1.0_{s}.jsonl"
                    for s in ("train", "dev")
                }
            ),
        )
    )
    add(
        Resource(
            "anli",
            "https://dl.fbaipublicfiles.com/anli/anli_v1.0.zip",
            "downloads/anli_v1.0.zip",
            post=_members(
                {
                    f"anli_v1.0/R{k}/{s}.jsonl": f"anli/R{k}/{s}.jsonl"
                    for k in (1, 2, 3)
                    for s in ("train", "dev", "test")
                }
            ),
        )
    )
    for name in ("train-v1.1.json", "dev-v1.1.json", "train-v2.0.json", "dev-v2.0.json"):
        add(
            Resource(
                "squad",
                f"https://rajpurkar.github.io/SQuAD-explorer/dataset/{name}",
                f"squad/{name}",
            )
        )
    for lang in SQUAD_TRANSLATE_TRAIN:
        name = f"squad.translate.train.en-{lang}.json"
        add(
            Resource(
                "squad_translate_train",
                f"{XTREME_TRANSLATIONS}/SQuAD/translate-train/{name}",
                f"squad/translate-train/{name}",
            )
        )
    for split in ("train", "val", "test"):
        add(
            Resource(
                "hellaswag",
                f"https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl",
                f"hellaswag/hellaswag_{split}.jsonl",
            )
        )
    for split in ("train", "valid"):
        add(
            Resource(
                "cosmosqa",
                f"https://raw.githubusercontent.com/wilburOne/cosmosqa/master/data/{split}.csv",
                f"cosmosqa/{split}.csv",
            )
        )
    for name in ("train_rand_split.jsonl", "dev_rand_split.jsonl"):
        add(
            Resource(
                "commonsenseqa",
                f"https://s3.amazonaws.com/commensenseqa/{name}",
                f"commonsenseqa/{name}",
            )
        )
    out.extend(_mlm(mlm_lines))
    add(
        Resource(
            "ccg",
            "",
            "ccg/ccg.train",
            manual_only=True,
            manual="CCGbank is licensed (LDC2005T13): write ccg/ccg.{train,dev,test} yourself, one "
            "sentence per line as 'tokens<TAB>supertags' (jiant) or 'word|POS|tag ...'",
        )
    )
    return [_pinned(res) for res in out]


# ---------------------------------------------------------------------------------- fetch


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_lock(root: Path) -> dict[str, str]:
    path = root / LOCK_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _mismatch(what: str | Path, expected: str, actual: str, kept: str) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}; {kept}"
    )


def _download(url: str, target: Path) -> Path:
    """``url`` -> a temporary file next to ``target`` (removed again if anything fails)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    try:
        with os.fdopen(handle, "wb") as out, open_url(url) as response:
            shutil.copyfileobj(response, out, 1 << 20)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def _install(temporary: Path, target: Path, expected: str | None, url: str) -> str:
    """Rename a verified download into place; a mismatch removes it and keeps ``target``."""
    try:
        actual = sha256_of(temporary)
        if expected and actual != expected:
            raise _mismatch(url, expected, actual, "the download was not kept")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return actual


def fetch(resource: Resource, root: Path, lock: dict[str, str]) -> Path:
    """Download ``resource`` (if absent), verify its checksum, run its post-processing."""
    if resource.lines is not None:
        return fetch_slice(resource, root, lock)
    target = root / resource.target
    expected = resource.sha256 or lock.get(resource.lock_key)
    if target.is_file():
        actual = sha256_of(target)
        if expected and actual != expected:
            raise _mismatch(target, expected, actual, "the file was left in place")
    elif resource.manual_only:
        raise FileNotFoundError(f"{resource.dataset}: {target} is missing; {resource.manual}")
    else:
        actual = _install(_download(resource.url, target), target, expected, resource.url)
    lock[resource.lock_key] = actual
    if resource.post is not None:
        resource.post(target, root)
    if resource.manual and not resource.manual_only:
        print(f"{resource.dataset}: manual step: {resource.manual}", flush=True)
    return target


# ------------------------------------------------------------------------ MLM text slices


def _slice_lines(url: str, stream: IO[bytes], lines: int) -> Iterator[bytes]:
    """Lines of the .xz ``stream`` until ``lines`` non-empty ones; each checked to be UTF-8."""
    kept = 0
    try:
        with lzma.open(stream) as text:
            for number, raw in enumerate(text, start=1):
                if kept >= lines:
                    return
                _check_utf8(url, number, raw)
                kept += bool(raw.strip())
                yield raw
    except lzma.LZMAError as error:
        raise r.DataFormatError(url, None, f"expected an .xz stream: {error}") from None


def _check_utf8(where: str, number: int, raw: bytes) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = raw[error.start : error.start + 1].hex()
        raise r.DataFormatError(
            where,
            number,
            f"byte 0x{byte} at column {error.start + 1} is not UTF-8; expected UTF-8 text",
        ) from None


def _write_slice(resource: Resource, target: Path) -> Path:
    """The slice of ``resource`` -> a temporary file next to ``target`` (removed on failure)."""
    assert resource.lines is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".part"
    )
    try:
        with os.fdopen(handle, "wb") as out, open_url(resource.url) as response:
            for raw in _slice_lines(resource.url, response, resource.lines):
                out.write(raw)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def _sliced_before(resource: Resource, lock: dict[str, str]) -> bool:
    """Whether the lock holds a slice of ``resource``'s URL (with any line cap)."""
    return any(key.startswith(f"{resource.url}#lines=") for key in lock)


def fetch_slice(resource: Resource, root: Path, lock: dict[str, str]) -> Path:
    """A bounded slice of a large .xz text file (CC-100), written atomically; its sha256 is locked
    per URL and line cap on first use (trust on first use) and verified afterwards. A file this
    command did not cut (e.g. the user's own text) is left as it is."""
    target = root / resource.target
    expected = lock.get(resource.lock_key)
    if target.is_file() and expected:
        actual = sha256_of(target)
        if actual != expected:
            raise _mismatch(target, expected, actual, "the file was left in place")
    elif target.is_file() and not _sliced_before(resource, lock):
        print(f"{resource.dataset}: {target} was not cut by prepare; left as it is", flush=True)
        return target
    else:  # absent, or cut with another --mlm_lines: slice again
        what = f"{resource.url} (first {resource.lines} lines)"
        actual = _install(_write_slice(resource, target), target, expected, what)
    lock[resource.lock_key] = actual
    return target


# ------------------------------------------------------------------------------- command


def _status(res: Resource, lock: dict[str, str]) -> str:
    if res.sha256:
        return f"sha256 pinned ({res.pin_source})"
    if res.lines is not None:
        state = "locked" if res.lock_key in lock else "on first use"
        return f"slice sha256 {state} (first {res.lines} lines)"
    return "sha256 locked" if res.lock_key in lock else "sha256 on first use"


def _dry_run(items: list[Resource], root: Path, lock: dict[str, str]) -> int:
    for res in items:
        present = "present" if (root / res.target).is_file() else "missing"
        note = f"  [manual: {res.manual}]" if res.manual else ""
        source = res.url or "(local only)"
        print(
            f"{res.dataset:22s} {present:7s} {source} -> {root / res.target}  "
            f"[{_status(res, lock)}]{note}"
        )
    pinned = sum(bool(res.sha256) for res in items)
    print(
        f"{len(items)} files for {len({res.dataset for res in items})} datasets under {root}; "
        f"{pinned} with a pinned sha256, {len(items) - pinned} trusted on first use "
        f"({', '.join(sorted(TRUST_ON_FIRST_USE))}, manual files)"
    )
    return 0


def _run(items: list[Resource], root: Path, lock: dict[str, str]) -> int:
    failures = []
    for number, res in enumerate(items, start=1):
        try:
            fetch(res, root, lock)
            print(f"[{number}/{len(items)}] {res.dataset}: {res.target} ok", flush=True)
        except ChecksumMismatch as error:  # stop: nothing after it runs on unverified bytes
            print(f"[{number}/{len(items)}] {res.dataset}: STOPPED {error}", file=sys.stderr)
            return 2
        except Exception as error:  # report and go on: the run is resumable
            failures.append(f"{res.dataset}: {error}")
            print(
                f"[{number}/{len(items)}] {res.dataset}: FAILED {error}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            _atomic_bytes(root / LOCK_FILE, json.dumps(lock, indent=1, sort_keys=True).encode())
    if failures:
        print(f"{len(failures)} of {len(items)} files failed; rerun to resume", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xstilts.data.prepare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data_dir", default=os.environ.get("XSTILTS_DATA_DIR", "data"))
    parser.add_argument("--only", default="", help="comma-separated datasets (default: all)")
    parser.add_argument(
        "--mlm_lines",
        type=int,
        default=MLM_LINES,
        help=f"non-empty lines of CC-100 per language for mlm/<lang>.txt (default {MLM_LINES})",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be fetched; fetch nothing"
    )
    args = parser.parse_args(argv)
    if args.mlm_lines < 1:
        parser.error("--mlm_lines must be at least 1")
    root = Path(args.data_dir)
    chosen = [x for x in args.only.split(",") if x]
    items = resources(mlm_lines=args.mlm_lines)
    known = sorted({res.dataset for res in items})
    unknown = [x for x in chosen if x not in known]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; known: {', '.join(known)}")
    items = [res for res in items if not chosen or res.dataset in chosen]
    lock = _load_lock(root)
    if args.dry_run:
        return _dry_run(items, root, lock)
    return _run(items, root, lock)


if __name__ == "__main__":
    sys.exit(main())
