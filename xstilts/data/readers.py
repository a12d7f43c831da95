"""Readers for every native release format the project uses; pure Python, no TensorFlow.

Each reader yields plain dict examples of one of five shapes:

* pair classification: ``{"id", "text_a", "text_b", "label"}`` (label: canonical string or None);
* tagging: ``{"id", "tokens": [str], "tags": [str] | None}``;
* span QA (SQuAD layout): ``{"id", "title", "context", "question", "answers":
  [{"text", "answer_start"}], "is_impossible"}``;
* multiple choice: ``{"id", "context", "question", "choices": [str], "label": int | None}``;
* retrieval: ``{"id", "text"}`` (BUCC), ``{"id", "source", "target"}`` (Tatoeba) and gold pairs.

Bad input raises :class:`DataFormatError` naming the file, the line (or JSON key) and what was
expected; a missing file raises :class:`FileNotFoundError` naming the path.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

NLI_LABELS = (
    "contradiction",
    "entailment",
    "neutral",
)  # XTREME / jiant order, shared by MNLI->XNLI
BINARY_LABELS = ("0", "1")
UPOS_TAGS = (
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM",
    "PART", "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
)  # fmt: skip
PANX_TAGS = ("B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O")

_NLI_ALIASES = {
    "e": "entailment",
    "n": "neutral",
    "c": "contradiction",
    "contradictory": "contradiction",
}
_BINARY_ALIASES = {"0": "0", "1": "1", "False": "0", "True": "1", "false": "0", "true": "1"}

Example = dict[str, Any]


# TyDiQA-GoldP question ids start with the language's English name (``finnish--7633...``).
TYDIQA_LANGUAGES = {
    "arabic": "ar",
    "bengali": "bn",
    "english": "en",
    "finnish": "fi",
    "indonesian": "id",
    "korean": "ko",
    "russian": "ru",
    "swahili": "sw",
    "telugu": "te",
}


def tydiqa_language_of(question_id: str) -> str:
    """The language code of a TyDiQA-GoldP question id."""
    return TYDIQA_LANGUAGES[question_id.split("-", 1)[0]]


class DataFormatError(ValueError):
    """A data file does not have the expected layout; the message starts with ``path:line:``."""

    def __init__(self, path: str | Path, line: int | str | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------------------------
# low-level helpers


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def _decode(where: str | Path, number: int, raw: bytes) -> str:
    """One line of UTF-8; other bytes are a ``DataFormatError`` naming the line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = raw[error.start : error.start + 1].hex()
        raise DataFormatError(
            where,
            number,
            f"byte 0x{byte} at column {error.start + 1} is not UTF-8; expected UTF-8 text "
            "(re-encode the file, e.g. `iconv -f <encoding> -t utf-8`)",
        ) from None


def _decoded_lines(where: str | Path, raw_lines: Iterable[bytes]) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line with its line ending); a UTF-8 BOM is dropped."""
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        yield number, _decode(where, number, raw)


def _raw_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    path = _existing(path)
    with open(path, "rb") as handle:
        yield from _decoded_lines(path, handle)


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line ending); a UTF-8 BOM is dropped."""
    for number, line in _raw_lines(path):
        yield number, line.rstrip("\r\n")


def _read_text(path: str | Path) -> str:
    """A whole UTF-8 file (JSON documents); bad bytes name their line."""
    data = _existing(path).read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        number = data.count(b"\n", 0, error.start) + 1
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line_end = data.find(b"\n", error.start)
        _decode(path, number, data[line_start : None if line_end < 0 else line_end])
        raise  # unreachable: _decode raised


def _looks_like_json(path: Path | str, number: int, line: str, expected: str) -> None:
    """A JSON document handed to a tab-separated reader is a file of another task."""
    if number == 1 and line.lstrip().startswith(("{", "[")):
        raise DataFormatError(
            path,
            number,
            f"this is a JSON file, not a tab-separated one; expected {expected} "
            "(a file of another task? SQuAD-style JSON goes to read_squad_json)",
        )


def _split_tsv(path: Path | str, number: int, line: str, min_fields: int, what: str) -> list[str]:
    _looks_like_json(path, number, line, what)
    fields = line.split("\t")
    if len(fields) < min_fields:
        raise DataFormatError(
            path, number, f"expected {min_fields} tab-separated fields ({what}), got {len(fields)}"
        )
    return fields


def _canonical_label(
    path: Path | str, where: int | str, raw: str, labels: Sequence[str], aliases: dict[str, str]
) -> str:
    label = aliases.get(raw.strip(), raw.strip())
    if label not in labels:
        raise DataFormatError(path, where, f"unknown label {raw!r}; expected one of {list(labels)}")
    return label


def _jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(path, number, f"invalid JSON line ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataFormatError(path, number, "expected a JSON object per line")
        yield number, record


def _field(path: Path | str, where: int | str, record: dict, key: str) -> Any:
    if key not in record:
        raise DataFormatError(path, where, f"missing key {key!r}; keys present: {sorted(record)}")
    return record[key]


def _csv_rows(path: str | Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header; the number is the physical line the row starts on.

    A row whose field count differs from the header's, or a quoted field still open at the end
    of the file, is an unbalanced quote (or a malformed row): a ``DataFormatError`` naming the
    line the row starts on and the line it ran to.
    """
    lines = (line for _, line in _raw_lines(path))
    reader = csv.DictReader(lines, strict=True)
    start = 1
    try:
        if reader.fieldnames is None:
            raise DataFormatError(path, 1, "empty CSV file; expected a header line")
        start = reader.line_num + 1
        for row in reader:
            _check_csv_row(path, reader, start, row)
            yield start, row
            start = reader.line_num + 1
    except csv.Error as error:
        raise DataFormatError(
            path,
            start,
            f"malformed CSV ({error}): a quoted field opened here is not closed properly "
            f"(read to line {reader.reader.line_num}); expected balanced double quotes",
        ) from None


def _check_csv_row(path: Path | str, reader: csv.DictReader, start: int, row: dict) -> None:
    header = reader.fieldnames or []
    extra, missing = None in row, any(value is None for value in row.values())
    if not (extra or missing):
        return
    if extra:
        got = len(header) + len(row[None])
    else:
        got = sum(value is not None for value in row.values())
    spans = ""
    if reader.line_num > start:
        spans = (
            f" (the row runs from line {start} to line {reader.line_num}: "
            "an unbalanced double quote?)"
        )
    raise DataFormatError(
        path, start, f"expected {len(header)} comma-separated fields {header}, got {got}{spans}"
    )


# --------------------------------------------------------------------------------------------
# pair classification


def _labelled(path: str | Path, labelled: bool | None) -> bool:
    """Whether every line must carry a label: given, else every split but ``test*`` files (XTREME
    strips test labels: ``test-xx.tsv``; its ``train-``/``dev-`` files always have them)."""
    return labelled if labelled is not None else not Path(path).name.startswith("test")


def _quoted_tsv_fields(path: Path | str, number: int, line: str) -> list[str]:
    """Fields of one line of XTREME's processed TSV files.

    XTREME writes them with ``csv.writer(delimiter="\\t")``: a text holding a double quote is
    wrapped in quotes with inner quotes doubled (``"Album "", weil"``). Files written without
    quoting (plain tab-joined text) read as they are. A field that opens a quote, escapes inner
    quotes by doubling them, and never closes is a broken quoted field.
    """
    if '"' not in line:
        return line.split("\t")
    try:
        (fields,) = csv.reader([line], delimiter="\t", strict=True)
        return fields
    except csv.Error:
        fields = line.split("\t")
    for index, field in enumerate(fields, start=1):
        if field.startswith('"') and '""' in field and not field.endswith('"'):
            raise DataFormatError(
                path,
                number,
                f"unbalanced double quote in field {index}: it opens a quoted field and doubles "
                "inner quotes (CSV escaping) but never closes it; expected a closing quote "
                "before the tab",
            )
    return fields


def read_xtreme_pair_tsv(
    path: str | Path,
    labels: Sequence[str] = NLI_LABELS,
    *,
    id_prefix: str = "",
    labelled: bool | None = None,
) -> Iterator[Example]:
    """XTREME's XNLI / PAWS-X files: ``text_a<TAB>text_b[<TAB>label]`` (test: no label).

    ``labelled``: whether every line must carry a label (default: all but ``test*`` files).
    """
    aliases = _NLI_ALIASES if tuple(labels) == NLI_LABELS else _BINARY_ALIASES
    required = _labelled(path, labelled)
    what = "text_a, text_b, label" if required else "text_a, text_b[, label]"
    with_label: bool | None = None
    for number, line in _lines(path):
        if not line.strip():
            continue
        _looks_like_json(path, number, line, what)
        fields = _quoted_tsv_fields(path, number, line)
        if len(fields) < 2:
            raise DataFormatError(
                path, number, f"expected 2 tab-separated fields ({what}), got {len(fields)}"
            )
        if len(fields) > 3:
            hint = {
                4: "; 'id, sentence1, sentence2, label' is PAWS-X's release layout "
                "(read_pawsx_original_tsv)",
                5: "; 5 fields is XTREME's translate-train layout (read_translate_train_tsv)",
            }.get(len(fields), "")
            raise DataFormatError(
                path, number, f"expected at most 3 fields ({what}), got {len(fields)}{hint}"
            )
        has_label = len(fields) == 3 and fields[2].strip() != ""
        if required and not has_label:
            raise DataFormatError(
                path, number, f"missing label on a labelled split; expected one of {list(labels)}"
            )
        if with_label is None:
            with_label = has_label
        elif has_label != with_label:
            raise DataFormatError(path, number, "some lines have a label and others do not")
        yield {
            "id": f"{id_prefix}{number}",
            "text_a": fields[0],
            "text_b": fields[1],
            "label": _canonical_label(path, number, fields[2], labels, aliases)
            if has_label
            else None,
        }


TRANSLATE_TRAIN_FIELDS = (
    "English premise/sentence1, English hypothesis/sentence2, "
    "translated premise/sentence1, translated hypothesis/sentence2, label"
)


def read_translate_train_tsv(
    path: str | Path, labels: Sequence[str] = NLI_LABELS, *, id_prefix: str = ""
) -> Iterator[Example]:
    """XTREME's translate-train TSV (``XNLI/translate-train/en-<lang>-translated.tsv``,
    ``PAWSX/translate-train/en-<lang>-translated.tsv``): five tab-separated fields, no header,
    no quoting (TFDS ``xtreme_xnli`` / ``xtreme_pawsx`` read it with ``csv.QUOTE_NONE``)::

        English text_a, English text_b, translated text_a, translated text_b, label

    XNLI spells contradiction ``contradictory``. ``text_a``/``text_b`` are the translation, the
    English side stays in ``text_a_en``/``text_b_en`` (for paired or code-switched mixtures).
    Every line needs a label: this is a training set.
    """
    aliases = _NLI_ALIASES if tuple(labels) == NLI_LABELS else _BINARY_ALIASES
    for number, line in _lines(path):
        if not line.strip():
            continue
        _looks_like_json(path, number, line, TRANSLATE_TRAIN_FIELDS)
        fields = line.split("\t")
        if len(fields) != 5:
            hint = (
                "; 2-3 fields is XTREME's target-task layout (text_a, text_b[, label]), "
                "not its translate-train release"
                if len(fields) in (2, 3)
                else ""
            )
            raise DataFormatError(
                path,
                number,
                f"expected 5 tab-separated fields ({TRANSLATE_TRAIN_FIELDS}), "
                f"got {len(fields)}{hint}",
            )
        if not fields[4].strip():
            raise DataFormatError(
                path, number, f"missing label (field 5); expected one of {list(labels)}"
            )
        yield {
            "id": f"{id_prefix}{number}",
            "text_a": fields[2],
            "text_b": fields[3],
            "label": _canonical_label(path, number, fields[4], labels, aliases),
            "text_a_en": fields[0],
            "text_b_en": fields[1],
        }


def read_xnli_mt_tsv(path: str | Path) -> Iterator[Example]:
    """XNLI-MT-1.0 (``XNLI-MT-1.0/multinli/multinli.train.<lang>.tsv``, XNLI's own machine
    translation of MNLI train): header ``premise<TAB>hypo<TAB>label``, no quoting, label
    ``contradictory`` for contradiction. The English file (``.en``) is MNLI train itself; rows of
    the per-language files are line-aligned with it."""
    for number, row in _read_headed_tsv(path, ("premise", "hypo", "label")):
        if not row["label"].strip():
            raise DataFormatError(
                path, number, f"missing label on a labelled split; expected one of {NLI_LABELS}"
            )
        yield {
            "id": str(number - 1),
            "text_a": row["premise"],
            "text_b": row["hypo"],
            "label": _canonical_label(path, number, row["label"], NLI_LABELS, _NLI_ALIASES),
        }


def _read_headed_tsv(
    path: str | Path, required: Sequence[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    header: list[str] | None = None
    for number, line in _lines(path):
        if header is None:
            _looks_like_json(path, number, line, f"a header line naming {list(required)}")
            header = line.split("\t")
            missing = [name for name in required if name not in header]
            if missing:
                raise DataFormatError(path, 1, f"header lacks columns {missing}; got {header}")
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataFormatError(
                path, number, f"expected {len(header)} tab-separated fields, got {len(fields)}"
            )
        yield number, dict(zip(header, fields, strict=True))
    if header is None:
        raise DataFormatError(path, 1, "empty file; expected a header line")


def read_pawsx_original_tsv(path: str | Path) -> Iterator[Example]:
    """PAWS-X release (``x-final/<lang>/*.tsv``): header ``id sentence1 sentence2 label``."""
    for number, row in _read_headed_tsv(path, ("id", "sentence1", "sentence2")):
        label = row.get("label")
        yield {
            "id": row["id"],
            "text_a": row["sentence1"],
            "text_b": row["sentence2"],
            "label": None
            if label is None
            else _canonical_label(path, number, label, BINARY_LABELS, _BINARY_ALIASES),
        }


def read_glue_mnli_tsv(path: str | Path) -> Iterator[Example]:
    """GLUE MNLI tsv (train/dev_*/test_*); the last column is ``gold_label``."""
    for number, row in _read_headed_tsv(path, ("index", "sentence1", "sentence2")):
        gold = row.get("gold_label")
        yield {
            "id": row.get("pairID", row["index"]),
            "text_a": row["sentence1"],
            "text_b": row["sentence2"],
            "genre": row.get("genre"),
            "label": None
            if gold is None
            else _canonical_label(path, number, gold, NLI_LABELS, _NLI_ALIASES),
        }


def read_mnli(path: str | Path) -> Iterator[Example]:
    """MNLI in either release: GLUE's tsv, or MultiNLI 1.0's JSON lines (``.jsonl``)."""
    if Path(path).suffix == ".jsonl":
        return read_nli_jsonl(path)
    return read_glue_mnli_tsv(path)


def read_glue_qqp_tsv(path: str | Path) -> Iterator[Example]:
    """GLUE QQP tsv: ``id qid1 qid2 question1 question2 is_duplicate`` (test: ``id q1 q2``)."""
    for number, row in _read_headed_tsv(path, ("id", "question1", "question2")):
        label = row.get("is_duplicate")
        yield {
            "id": row["id"],
            "text_a": row["question1"],
            "text_b": row["question2"],
            "label": None
            if label is None
            else _canonical_label(path, number, label, BINARY_LABELS, _BINARY_ALIASES),
        }


def read_quora_paraphrase_tsv(path: str | Path) -> Iterator[Example]:
    """Quora paraphrase rows without header: ``label<TAB>q1<TAB>q2<TAB>id`` (AllenNLP layout)."""
    for number, line in _lines(path):
        if not line.strip():
            continue
        fields = _split_tsv(path, number, line, 4, "label, question1, question2, id")
        yield {
            "id": fields[3],
            "text_a": fields[1],
            "text_b": fields[2],
            "label": _canonical_label(path, number, fields[0], BINARY_LABELS, _BINARY_ALIASES),
        }


def read_glue_mrpc_tsv(path: str | Path) -> Iterator[Example]:
    """GLUE MRPC tsv: ``Quality #1 ID #2 ID #1 String #2 String``."""
    for number, row in _read_headed_tsv(path, ("Quality", "#1 String", "#2 String")):
        yield {
            "id": f"{row.get('#1 ID', number)}-{row.get('#2 ID', number)}",
            "text_a": row["#1 String"],
            "text_b": row["#2 String"],
            "label": _canonical_label(path, number, row["Quality"], BINARY_LABELS, _BINARY_ALIASES),
        }


def read_nli_jsonl(
    path: str | Path, *, language: str | None = None, skip_unlabeled: bool = True
) -> Iterator[Example]:
    """NLI JSON lines in any of the release layouts.

    * MultiNLI 1.0 / SNLI 1.0 / XNLI 1.0: ``sentence1``, ``sentence2``, ``gold_label`` (``"-"``
      = no annotator majority; skipped when ``skip_unlabeled``), XNLI adds ``language``
      (filtered by ``language`` when given);
    * ANLI: ``uid``, ``context``, ``hypothesis``, ``label`` in ``e/n/c``;
    * jiant's MNLI: ``premise``, ``hypothesis``, ``label``.
    """
    for number, record in _jsonl(path):
        if language is not None and record.get("language", language) != language:
            continue
        if "sentence1" in record:
            text_a, text_b = record["sentence1"], _field(path, number, record, "sentence2")
            raw = record.get("gold_label")
        elif "context" in record:
            text_a, text_b = record["context"], _field(path, number, record, "hypothesis")
            raw = record.get("label")
        elif "premise" in record:
            text_a, text_b = record["premise"], _field(path, number, record, "hypothesis")
            raw = record.get("label")
        else:
            raise DataFormatError(
                path,
                number,
                "expected sentence1/sentence2, context/hypothesis or premise/hypothesis",
            )
        if raw == "-":
            if skip_unlabeled:
                continue
            raw = None
        example = {
            "id": str(record.get("pairID", record.get("uid", number))),
            "text_a": text_a,
            "text_b": text_b,
            "label": None
            if raw is None
            else _canonical_label(path, number, raw, NLI_LABELS, _NLI_ALIASES),
        }
        if "language" in record:
            example["language"] = record["language"]
        yield example


def read_xnli_original_tsv(path: str | Path, *, language: str | None = None) -> Iterator[Example]:
    """XNLI 1.0 release tsv (``xnli.dev.tsv``/``xnli.test.tsv``), optionally one language."""
    for number, row in _read_headed_tsv(path, ("language", "gold_label", "sentence1", "sentence2")):
        if language is not None and row["language"] != language:
            continue
        yield {
            "id": row.get("pairID", str(number)),
            "language": row["language"],
            "text_a": row["sentence1"],
            "text_b": row["sentence2"],
            "label": _canonical_label(path, number, row["gold_label"], NLI_LABELS, _NLI_ALIASES),
        }


def read_anli_analysis_csv(path: str | Path) -> Iterator[Example]:
    """ANLI's annotated analysis CSV: ``context``, ``statement``, ``gold_label`` (e/n/c)."""
    for number, row in _csv_rows(path):
        for key in ("context", "statement", "gold_label"):
            _field(path, number, row, key)
        yield {
            "id": row.get("uid") or str(number),
            "text_a": row["context"],
            "text_b": row["statement"],
            "label": _canonical_label(path, number, row["gold_label"], NLI_LABELS, _NLI_ALIASES),
        }


# --------------------------------------------------------------------------------------------
# tagging

_LANG_PREFIX = re.compile(r"^([a-z]{2,3}):(?=.)")


def read_token_tag_file(
    path: str | Path,
    tags: Sequence[str] | None = None,
    *,
    strip_language_prefix: bool = True,
    id_prefix: str = "",
    labelled: bool | None = None,
) -> Iterator[Example]:
    """XTREME token files (UDPOS ``dev-xx.tsv``, PAN-X ``xx:token<TAB>B-PER``), blank-separated.

    Test files may carry tokens only (``tags`` is then None); ``labelled`` (default: every file
    but ``test*``) requires a tag on every token. PAN-X tokens keep a ``lang:`` prefix in the
    release; it is stripped when every token of the file carries the same one.
    """
    return _token_tag_examples(
        path,
        _lines(path),
        tags,
        strip_language_prefix=strip_language_prefix,
        id_prefix=id_prefix,
        labelled=_labelled(path, labelled),
    )


def _token_tag_examples(
    where: str | Path,
    lines: Iterable[tuple[int, str]],
    tags: Sequence[str] | None,
    *,
    strip_language_prefix: bool,
    id_prefix: str,
    labelled: bool,
) -> Iterator[Example]:
    tokens: list[str] = []
    labels: list[str] = []
    start = 1
    prefix: str | None = None
    with_tags: bool | None = None
    count = 0

    def emit() -> Example:
        return {
            "id": f"{id_prefix}{count}",
            "tokens": list(tokens),
            "tags": list(labels) if with_tags else None,
            "line": start,
        }

    for number, line in lines:
        if not line.strip():
            if tokens:
                yield emit()
                count += 1
                tokens.clear()
                labels.clear()
            continue
        _looks_like_json(where, number, line, "'token<TAB>tag' lines")
        if not tokens:
            start = number
        fields = line.split("\t")
        if len(fields) > 2 or not fields[0]:
            raise DataFormatError(
                where, number, f"expected 'token[<TAB>tag]', got {len(fields)} fields"
            )
        has_tag = len(fields) == 2 and fields[1].strip() != ""
        if labelled and not has_tag:
            raise DataFormatError(
                where, number, "missing tag on a labelled split; expected 'token<TAB>tag'"
            )
        if with_tags is None:
            with_tags = has_tag
        elif has_tag != with_tags:
            raise DataFormatError(where, number, "some lines have a tag and others do not")
        token = fields[0]
        if strip_language_prefix:
            if prefix is None:
                match = _LANG_PREFIX.match(token)
                prefix = match.group(0) if match else ""
            if prefix:
                if not token.startswith(prefix):
                    raise DataFormatError(
                        where, number, f"token {token!r} lacks the {prefix!r} prefix"
                    )
                token = token[len(prefix) :]
        tokens.append(token)
        if has_tag:
            tag = fields[1].strip()
            if tags is not None and tag not in tags:
                raise DataFormatError(
                    where, number, f"unknown tag {tag!r}; expected one of {list(tags)}"
                )
            labels.append(tag)
    if tokens:
        yield emit()


PANX_SPLITS = ("train", "dev", "test")


def read_panx_archive(
    path: str | Path, split: str = "train", *, language: str | None = None
) -> Iterator[Example]:
    """PAN-X (WikiANN, Rahimi et al. split) straight from its release archives.

    * a per-language archive ``<lang>.tar.gz`` whose members are exactly ``train``, ``dev`` and
      ``test`` (``./train`` also accepted): lines ``<lang>:<token><TAB><BIO tag>``, a blank line
      between sentences, test labelled too;
    * the bundle holding those archives (``language`` picks one): XTREME's ``AmazonPhotos.zip``
      and the rehosted ``panx_dataset.zip`` / ``panx_dataset.tar`` (members
      ``panx_dataset/<lang>.tar.gz`` or ``<lang>.tar.gz``).

    An archive with other member names is a ``DataFormatError`` naming the member.
    """
    if split not in PANX_SPLITS:
        raise ValueError(f"split must be one of {PANX_SPLITS}, got {split!r}")
    path = _existing(path)
    if language is not None:
        inner_name, data = _panx_bundle_member(path, language)
        return _panx_language_archive(f"{path}!{inner_name}", data, split)
    return _panx_language_archive(str(path), path.read_bytes(), split)


def _archive_names(path: Path) -> tuple[list[str], Any]:
    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        return [n for n in archive.namelist() if not n.endswith("/")], archive
    try:
        archive = tarfile.open(path)
    except tarfile.TarError as error:
        raise DataFormatError(
            path, None, f"not a zip or tar archive ({error}); expected the PAN-X bundle"
        ) from None
    return [m.name for m in archive.getmembers() if m.isfile()], archive


def _panx_bundle_member(path: Path, language: str) -> tuple[str, bytes]:
    names, archive = _archive_names(path)
    with archive:
        wanted = (f"panx_dataset/{language}.tar.gz", f"{language}.tar.gz")
        for name in names:
            if name.removeprefix("./") in wanted:
                if isinstance(archive, zipfile.ZipFile):
                    return name, archive.read(name)
                return name, archive.extractfile(name).read()
        odd = [n for n in names if not n.removeprefix("./").endswith(".tar.gz")]
        if odd:
            raise DataFormatError(
                path,
                odd[0],
                f"unexpected member {odd[0]!r}; expected per-language archives "
                "panx_dataset/<lang>.tar.gz (XTREME's AmazonPhotos.zip / panx_dataset.tar)",
            )
        raise DataFormatError(
            path, None, f"no member {wanted[0]} or {wanted[1]}; members: {sorted(names)[:10]}"
        )


def _panx_language_archive(where: str, data: bytes, split: str) -> Iterator[Example]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data))
    except tarfile.TarError as error:
        raise DataFormatError(
            where, None, f"not a tar archive ({error}); expected <lang>.tar.gz of PAN-X"
        ) from None
    with archive:
        members = {m.name.removeprefix("./"): m for m in archive.getmembers() if m.isfile()}
        unexpected = sorted(set(members) - set(PANX_SPLITS))
        if unexpected:
            raise DataFormatError(
                where,
                unexpected[0],
                f"unexpected member {unexpected[0]!r}; expected exactly the split files "
                f"{list(PANX_SPLITS)} of a PAN-X <lang>.tar.gz",
            )
        if split not in members:
            raise DataFormatError(where, split, f"no member {split!r}; members: {sorted(members)}")
        raw = archive.extractfile(members[split]).read()
    member = f"{where}!{split}"
    lines = ((n, line.rstrip("\r\n")) for n, line in _decoded_lines(member, raw.splitlines(True)))
    yield from _token_tag_examples(
        member, lines, PANX_TAGS, strip_language_prefix=True, id_prefix="", labelled=True
    )


def read_panx_rahimi_csv(path: str | Path) -> Iterator[Example]:
    """WikiANN (Rahimi et al. split) CSV: ``sent_idx,word_idx,word,word_id,truth``; ``word`` keeps
    its ``lang:`` prefix, which is stripped."""
    current: str | None = None
    tokens: list[str] = []
    labels: list[str] = []
    start = 2
    for number, row in _csv_rows(path):
        for key in ("sent_idx", "word_idx", "word", "truth"):
            _field(path, number, row, key)
        if row["sent_idx"] != current:
            if tokens:
                yield {"id": current, "tokens": list(tokens), "tags": list(labels), "line": start}
            current, start = row["sent_idx"], number
            tokens.clear()
            labels.clear()
        if int(row["word_idx"]) != len(tokens):
            raise DataFormatError(
                path, number, f"word_idx {row['word_idx']} out of order; expected {len(tokens)}"
            )
        match = _LANG_PREFIX.match(row["word"])
        tokens.append(row["word"][match.end() :] if match else row["word"])
        if row["truth"] not in PANX_TAGS:
            raise DataFormatError(
                path, number, f"unknown tag {row['truth']!r}; expected one of {list(PANX_TAGS)}"
            )
        labels.append(row["truth"])
    if tokens:
        yield {"id": current, "tokens": tokens, "tags": labels, "line": start}


def read_ccg_supertags(path: str | Path) -> Iterator[Example]:
    """CCG supertags (CCGbank is licensed: a local file only), one sentence per line, either

    * jiant's layout: ``space-tokenized text<TAB>space-separated supertags``, or
    * C&C / CCGbank ``.stagged``: ``word|POS|supertag word|POS|supertag ...``.
    """
    for number, line in _lines(path):
        if not line.strip():
            continue
        if "\t" in line:
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataFormatError(
                    path, number, f"expected 'text<TAB>tags', got {len(fields)} fields"
                )
            tokens, tags = fields[0].split(" "), fields[1].split()
        else:
            tokens, tags = [], []
            for item in line.split():
                parts = item.split("|")
                if len(parts) != 3:
                    raise DataFormatError(
                        path, number, f"expected 'word|POS|supertag', got {item!r}"
                    )
                tokens.append(parts[0])
                tags.append(parts[2])
        if len(tokens) != len(tags):
            raise DataFormatError(path, number, f"{len(tokens)} tokens but {len(tags)} supertags")
        yield {"id": str(number), "tokens": tokens, "tags": tags, "line": number}


# --------------------------------------------------------------------------------------------
# span QA


def read_squad_json(
    path: str | Path, *, drop_withheld_answers: bool = True, on_misaligned: str = "error"
) -> Iterator[Example]:
    """SQuAD v1.1 / v2.0 JSON (SQuAD, XQuAD, MLQA, TyDiQA-GoldP) and the flat Hugging Face layout.

    Answers whose ``text`` is empty are withheld labels (XTREME strips TyDiQA's test answers that
    way) and are dropped. Every kept answer must match the context at ``answer_start``; with
    ``on_misaligned="drop"`` (machine-translated training sets) a misaligned answer is dropped
    instead, and a question left without answers is skipped.
    """
    if on_misaligned not in ("error", "drop"):
        raise ValueError(f"on_misaligned must be 'error' or 'drop', got {on_misaligned!r}")
    path = _existing(path)
    data = _squad_articles(path)
    for a, article in enumerate(data):
        if "paragraphs" not in article and "context" in article:  # flat HF layout
            answers = article.get("answers", {"text": [], "answer_start": []})
            example = _qa_example(
                path,
                f"$.data[{a}]",
                article.get("title", ""),
                article["context"],
                article,
                [
                    {"text": t, "answer_start": s}
                    for t, s in zip(answers["text"], answers["answer_start"], strict=True)
                ],
                drop_withheld_answers,
                on_misaligned,
            )
            if example is not None:
                yield example
            continue
        paragraphs = _field(path, f"$.data[{a}]", article, "paragraphs")
        for p, paragraph in enumerate(paragraphs):
            where = f"$.data[{a}].paragraphs[{p}]"
            context = _field(path, where, paragraph, "context")
            for q, qa in enumerate(_field(path, where, paragraph, "qas")):
                example = _qa_example(
                    path,
                    f"{where}.qas[{q}]",
                    article.get("title", ""),
                    context,
                    qa,
                    _field(path, f"{where}.qas[{q}]", qa, "answers"),
                    drop_withheld_answers,
                    on_misaligned,
                )
                if example is not None:
                    yield example


def _squad_articles(path: Path) -> list:
    """``$.data`` of a SQuAD-style JSON document; anything else names what it found."""
    text = _read_text(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        hint = ""
        if error.pos == 0 or "\t" in text.split("\n", 1)[0]:
            hint = "; this is not a JSON document (a tab-separated file of another task?)"
        raise DataFormatError(
            path,
            error.lineno,
            f"invalid JSON ({error.msg}); expected SQuAD-style JSON "
            f'{{"data": [{{"paragraphs": [...]}}]}}{hint}',
        ) from None
    if not isinstance(document, dict) or "data" not in document:
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise DataFormatError(
            path,
            "$",
            f'expected SQuAD-style JSON {{"data": [articles]}}, found {found} '
            "(a file of another task?)",
        )
    if not isinstance(document["data"], list):
        raise DataFormatError(path, "$.data", "expected a list of articles")
    return document["data"]


def _qa_example(
    path: Path,
    where: str,
    title: str,
    context: str,
    qa: dict,
    answers: list,
    drop_withheld: bool,
    on_misaligned: str = "error",
) -> Example | None:
    kept = []
    misaligned = 0
    for n, answer in enumerate(answers):
        text, start = answer.get("text"), answer.get("answer_start")
        if not isinstance(text, str) or not isinstance(start, int):
            raise DataFormatError(
                path, f"{where}.answers[{n}]", "expected {'text': str, 'answer_start': int}"
            )
        if text == "" and drop_withheld:
            continue
        if context[start : start + len(text)] != text:
            if on_misaligned == "drop":
                misaligned += 1
                continue
            raise DataFormatError(
                path,
                f"{where}.answers[{n}]",
                f"answer {text!r} is not at answer_start {start} of the context",
            )
        kept.append({"text": text, "answer_start": start})
    if misaligned and not kept:
        return None
    impossible = bool(qa.get("is_impossible", False))
    if impossible and kept:
        raise DataFormatError(path, where, "is_impossible is true but answers are given")
    return {
        "id": str(_field(path, where, qa, "id")),
        "title": title,
        "context": context,
        "question": _field(path, where, qa, "question"),
        "answers": kept,
        "is_impossible": impossible,
    }


# --------------------------------------------------------------------------------------------
# multiple choice


def read_hellaswag_jsonl(path: str | Path) -> Iterator[Example]:
    """HellaSwag release jsonl: context ``ctx_a``, each choice ``ctx_b + ' ' + ending`` (jiant)."""
    for number, record in _jsonl(path):
        endings = _field(path, number, record, "endings")
        ctx_b = record.get("ctx_b", "")
        label = record.get("label")
        yield {
            "id": str(record.get("ind", number)),
            "context": _field(path, number, record, "ctx_a"),
            "question": "",
            "choices": [f"{ctx_b} {ending}".strip() for ending in endings],
            "label": _choice_label(path, number, label, len(endings)),
        }


def _choice_label(path: Path | str, where: int | str, label: Any, num_choices: int) -> int | None:
    if label is None or label == "":
        return None
    try:
        value = int(label)
    except (TypeError, ValueError):
        raise DataFormatError(path, where, f"label {label!r} is not an integer") from None
    if not 0 <= value < num_choices:
        raise DataFormatError(path, where, f"label {value} outside 0..{num_choices - 1}")
    return value


def read_swag_csv(path: str | Path) -> Iterator[Example]:
    """SWAG csv: context ``sent1``, choices ``sent2 + ' ' + ending0..3``."""
    for number, row in _csv_rows(path):
        endings = [row[f"ending{i}"] for i in range(4) if f"ending{i}" in row]
        if len(endings) != 4:
            raise DataFormatError(path, number, "expected columns ending0..ending3")
        sent2 = _field(path, number, row, "sent2")
        yield {
            "id": row.get("fold-ind") or str(number),
            "context": _field(path, number, row, "sent1"),
            "question": "",
            "choices": [f"{sent2} {ending}".strip() for ending in endings],
            "label": _choice_label(path, number, row.get("label"), 4),
        }


def read_cosmosqa_csv(path: str | Path) -> Iterator[Example]:
    """Cosmos QA csv: ``id,context,question,answer0..answer3,label``."""
    for number, row in _csv_rows(path):
        answers = [row[f"answer{i}"] for i in range(4) if f"answer{i}" in row]
        if len(answers) != 4:
            raise DataFormatError(path, number, "expected columns answer0..answer3")
        yield {
            "id": _field(path, number, row, "id"),
            "context": _field(path, number, row, "context"),
            "question": _field(path, number, row, "question"),
            "choices": answers,
            "label": _choice_label(path, number, row.get("label"), 4),
        }


def read_cosmosqa_jsonl(path: str | Path) -> Iterator[Example]:
    """Cosmos QA release jsonl (same keys as the csv)."""
    for number, record in _jsonl(path):
        answers = [_field(path, number, record, f"answer{i}") for i in range(4)]
        yield {
            "id": str(record.get("id", number)),
            "context": _field(path, number, record, "context"),
            "question": _field(path, number, record, "question"),
            "choices": answers,
            "label": _choice_label(path, number, record.get("label"), 4),
        }


def read_commonsenseqa_jsonl(path: str | Path) -> Iterator[Example]:
    """CommonsenseQA in the release layout (``question.stem``, ``question.choices[{label,text}]``)
    or the flat Hugging Face re-export (``question`` str, ``choices{label:[], text:[]}``)."""
    for number, record in _jsonl(path):
        question = _field(path, number, record, "question")
        if isinstance(question, dict):
            stem = _field(path, number, question, "stem")
            choices = _field(path, number, question, "choices")
            keys = [choice["label"] for choice in choices]
            texts = [choice["text"] for choice in choices]
        else:
            stem = question
            choices = _field(path, number, record, "choices")
            keys, texts = list(choices["label"]), list(choices["text"])
        answer = record.get("answerKey")
        if answer in (None, ""):
            label = None
        elif answer in keys:
            label = keys.index(answer)
        else:
            raise DataFormatError(
                path, number, f"answerKey {answer!r} not among choice labels {keys}"
            )
        yield {
            "id": str(record.get("id", number)),
            "context": "",
            "question": stem,
            "choices": texts,
            "label": label,
        }


# --------------------------------------------------------------------------------------------
# retrieval and raw text


def read_bucc_sentences(path: str | Path) -> Iterator[Example]:
    """BUCC 2018 corpus file: ``lang-000000001<TAB>sentence``."""
    for number, line in _lines(path):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0]:
            raise DataFormatError(
                path, number, f"expected 'id<TAB>sentence', got {len(fields)} fields"
            )
        yield {"id": fields[0], "text": fields[1]}


def read_bucc_gold(path: str | Path) -> list[tuple[str, str]]:
    """BUCC 2018 gold file: ``xx-id<TAB>en-id`` pairs."""
    pairs = []
    for number, line in _lines(path):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataFormatError(
                path, number, f"expected 'source_id<TAB>english_id', got {len(fields)} fields"
            )
        pairs.append((fields[0], fields[1]))
    return pairs


def read_bucc(
    source_path: str | Path, english_path: str | Path, gold_path: str | Path | None = None
) -> Iterator[Example]:
    """One BUCC 2018 split: ``{"id", "text", "side"}`` per sentence (side ``source`` or
    ``target``), then one ``{"id": "src<TAB>en", "side": "gold", "text": ""}`` per gold pair."""
    gold = set(read_bucc_gold(gold_path)) if gold_path else set()
    for side, path in (("source", source_path), ("target", english_path)):
        for example in read_bucc_sentences(path):
            yield {**example, "side": side}
    for source, target in sorted(gold):
        yield {"id": f"{source}\t{target}", "side": "gold", "text": ""}


def read_tatoeba(source_path: str | Path, english_path: str | Path) -> Iterator[Example]:
    """Tatoeba (LASER v1): two line-aligned files; the example's ``id`` is the line index."""
    source = [line for _, line in _lines(source_path)]
    english = [line for _, line in _lines(english_path)]
    if len(source) != len(english):
        raise DataFormatError(
            english_path, len(english), f"{len(english)} lines but {source_path} has {len(source)}"
        )
    for index, (src, eng) in enumerate(zip(source, english, strict=True)):
        yield {"id": index, "source": src, "target": eng}


def read_text_lines(path: str | Path) -> Iterator[Example]:
    """One text per non-empty line (MLM corpora)."""
    for number, line in _lines(path):
        if line.strip():
            yield {"id": str(number), "text": line}


def read_label_lines(path: str | Path) -> list[str]:
    """XTREME's label / prediction files: one label per line (blank lines separate sentences)."""
    return [line for _, line in _lines(path)]


# --------------------------------------------------------------------------------------------
# official releases never read our translations


OURS_SOURCE = "translate-train-ours"  # the ``source`` of ``python -m xstilts.translate``'s manifest


def read_release(path: str | Path, *paths: str | Path, reader: Any, ours: str,
                 **reader_kwargs: Any) -> Iterator[Example]:
    """``reader``'s examples of an official translate-train release file. A file with a
    ``<file>.manifest.json`` beside it (``python -m xstilts.translate`` writes one; a release has
    none) is a ``DataFormatError`` naming the file and our task (``<ours>.<lang>``) to read it."""
    manifest = Path(f"{path}.manifest.json")
    if manifest.exists():
        try:
            record = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            record = {"source": f"unreadable ({error})"}
        record = record if isinstance(record, dict) else {"source": repr(record)}
        source, language = record.get("source"), record.get("language", "<lang>")
        what = "our translation (python -m xstilts.translate)" if source == OURS_SOURCE else \
            f"not an official release ({manifest.name} beside it: source {source!r})"
        raise DataFormatError(
            path, None, f"{what}, not the official release this task reads; read it as the "
            f"task {ours}.{language} (it reads this file with {manifest.name}), or put the "
            f"official release back at this path")
    yield from reader(path, *paths, **reader_kwargs)
