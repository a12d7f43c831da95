"""XTREME prediction and label files: ``<task>/test-<lang>.tsv|json``, read and written.

Formats (google-research/xtreme ``evaluate.py`` readers):

* classification (xnli, pawsx) and tatoeba: one label / index per line;
* tagging (udpos, panx): one tag per line, sentences separated by a blank line;
* bucc2018: ``src_id<TAB>trg_id`` per line;
* QA (xquad, mlqa, tydiqa): predictions are a JSON object ``{question_id: answer_text}``,
  labels a SQuAD JSON (``{"data": [...]}``).

Readers follow XTREME's parsing exactly and raise ``ValueError`` naming the file for empty or
malformed files. Writers write a temporary file and rename it, so no half-written file is left.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _read_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: empty file")
    return text


def _lines(text: str) -> list[str]:
    """Lines as Python's file iteration yields them (only newlines split, unlike splitlines)."""
    lines = text.replace("\r\n", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_lines(path: str | os.PathLike) -> list[str]:
    """XTREME ``read_label``: every line, stripped (xnli, pawsx, tatoeba, bucc2018)."""
    return [line.strip() for line in _lines(_read_text(path))]


def read_tags(path: str | os.PathLike) -> list[list[str]]:
    """XTREME ``read_tag``: tag sentences separated by blank lines (each blank line ends one)."""
    sentences: list[list[str]] = []
    current: list[str] = []
    for line in _lines(_read_text(path)):
        line = line.strip()
        if line:
            current.append(line)
        else:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def read_json(path: str | os.PathLike) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def read_squad(path: str | os.PathLike) -> list[dict]:
    """SQuAD-format labels: the ``data`` list (XTREME ``read_squad``)."""
    obj = read_json(path)
    data = obj["data"] if isinstance(obj, dict) and "data" in obj else obj
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a SQuAD JSON with a 'data' list of articles")
    return data


def read_qa_predictions(path: str | os.PathLike) -> dict[str, str]:
    obj = read_json(path)
    if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
        raise ValueError(f"{path}: expected a JSON object mapping question ids to answer strings")
    return obj


def _atomic_write(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_lines(path: str | os.PathLike, lines: Iterable[object]) -> Path:
    """One item per line (classification labels, Tatoeba indices)."""
    return _atomic_write(path, "".join(f"{line}\n" for line in lines))


def write_tags(path: str | os.PathLike, sentences: Iterable[Sequence[str]]) -> Path:
    return _atomic_write(path, "".join("".join(f"{t}\n" for t in s) + "\n" for s in sentences))


def write_bucc_pairs(path: str | os.PathLike, pairs: Iterable[tuple[str, str]]) -> Path:
    return write_lines(path, (f"{src}\t{trg}" for src, trg in pairs))


def write_qa_predictions(path: str | os.PathLike, answers: Mapping[str, str]) -> Path:
    return _atomic_write(path, json.dumps(dict(answers), ensure_ascii=False, indent=1) + "\n")
