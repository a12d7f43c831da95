"""UD CoNLL-U -> XTREME's UDPOS files (``<split>-<lang>.tsv``: ``token<TAB>UPOS``), by its rule.

Anchor (google-research/xtreme, commit 838c13b69daa):

* ``scripts/download_data.sh`` ``download_treebank``: every ``ud-treebanks-v2.5/*/*.conllu`` whose
  file name starts with ``<lang>_`` (v2.7 for XTREME-R's lt pl uk wo ro) goes through
  ``third_party/ud-conversion-tools/conllu_to_conll.py --lang <lang>
  --replace_subtokens_with_fused_forms --print_fused_forms``;
* ``third_party/ud-conversion-tools/lib/conll.py`` ``read_conll_u`` (empty nodes ``8.1`` and
  comments dropped; basic HEAD edges *and* the integer heads of DEPS form one graph),
  ``DependencyTree._keep_fused_form`` / ``_choose_spanhead_from_heuristics``: a multi-word token
  ``3-4 du`` becomes ONE token, its surface form ``du``, tagged with the UPOS of its span head: the
  word of the span with the fewest ancestors in that graph; on a tie, the tied word whose UPOS comes
  first in the language's precedence list (``POS_PRECEDENCE``; a UPOS missing from the list makes
  XTREME's script fail on the whole file); the other words of the span are removed;
* ``utils_preprocess.py`` ``udpos_preprocess``: per language every converted file, in file-name
  order, goes to train / dev / test by ``'train'`` / ``'dev'`` / ``'test'`` in its name;
  a sentence whose forms are all (or all but one) ``_`` is dropped (treebanks shipped without
  text); ZWNJ (U+200C) and spaces inside a form are removed; ``<split>-<lang>.tsv`` is written as
  ``token<TAB>UPOS`` lines, one blank line between sentences, no blank line at the end; the test
  split loses its tags there (``strip_test_labels=True`` reproduces that; the default keeps them:
  the labelled test set).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from xstilts.data.readers import UPOS_TAGS, DataFormatError

# conllu_to_conll.py POSRANKPRECEDENCEDICT (the default list ends with '' from its trailing space;
# "fr" still says CONJ, UD v1's name of CCONJ).
POS_PRECEDENCE: dict[str, tuple[str, ...]] = {
    "default": tuple(
        "VERB NOUN PROPN PRON ADJ NUM ADV INTJ AUX ADP DET PART CCONJ SCONJ X PUNCT ".split(" ")
    ),
    "es": tuple("VERB AUX PRON ADP DET".split(" ")),
    "fr": tuple("VERB AUX PRON NOUN ADJ ADV ADP DET PART SCONJ CONJ".split(" ")),
    "it": tuple("VERB AUX ADV PRON ADP DET INTJ".split(" ")),
}
# download_data.sh download_treebank: XTREME's languages from UD v2.5, XTREME-R's from v2.7
UD_V25_LANGUAGES = tuple(
    "af ar bg de el en es et eu fa fi fr he hi hu id it ja kk ko mr nl pt ru ta te th tl tr ur vi "
    "yo zh".split()
)
UD_V27_LANGUAGES = ("lt", "pl", "uk", "wo", "ro")
SPLITS = ("train", "dev", "test")

Sentence = tuple[list[str], list[str]]


class XtremeRuleError(DataFormatError):
    """XTREME's conversion has no answer for this sentence: its script fails on the whole file."""


@dataclasses.dataclass
class _Word:
    form: str
    upos: str
    line: int
    xpos: str = "_"


@dataclasses.dataclass
class _Block:
    """One sentence as ``read_conll_u`` sees it: words, multi-word tokens, graph edges."""

    start: int
    sent_id: str | None = None  # the "# sent_id = ..." comment, if any
    words: dict[int, _Word] = dataclasses.field(default_factory=dict)
    # first id -> (last id, surface form, line)
    fused: dict[int, tuple[int, str, int]] = dataclasses.field(default_factory=dict)
    parents: dict[int, set[int | None]] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------- parsing


def _parse_id(path: Path, number: int, raw: str) -> int | tuple[int, int] | None:
    """lib/conll.py parse_id: '_' and empty nodes ('8.1') -> None, '3-4' -> (3, 4), else int."""
    if raw == "_" or "." in raw:
        return None
    parts = raw.split("-")
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise DataFormatError(path, number, f"expected an integer word id or a range, got {raw!r}")
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    return int(parts[0])


def _parse_head(path: Path, number: int, raw: str) -> int | None:
    if raw == "_":
        return None
    if not raw.isdigit():
        raise DataFormatError(path, number, f"expected an integer HEAD, got {raw!r}")
    return int(raw)


def _parse_deps(path: Path, number: int, raw: str) -> list[int]:
    """lib/conll.py parse_deps: the integer heads of DEPS ('8.1:nsubj' is skipped)."""
    if raw == "_":
        return []
    heads = []
    for pair in raw.split("|"):
        head, _, relation = pair.partition(":")
        if head.isdigit():
            if not relation:
                raise DataFormatError(path, number, f"expected DEPS 'head:relation', got {pair!r}")
            heads.append(int(head))
    return heads


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):  # noqa: B007
                yield number, line.rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise DataFormatError(path, number + 1, f"not UTF-8 ({error.reason})") from None


def _add_line(block: _Block, path: Path, number: int, line: str) -> None:
    fields = line.split("\t")
    if len(fields) != 10:
        raise DataFormatError(
            path, number, f"expected 10 tab-separated CoNLL-U fields, got {len(fields)}"
        )
    ident = _parse_id(path, number, fields[0])
    if isinstance(ident, tuple):
        block.fused[ident[0]] = (ident[1], fields[1], number)
    elif ident is not None:
        head = _parse_head(path, number, fields[6])
        block.words[ident] = _Word(fields[1], fields[3], number, fields[4])
        parents = block.parents.setdefault(ident, set())
        parents.add(head)
        parents.update(_parse_deps(path, number, fields[8]))


def _blocks(path: Path) -> Iterator[_Block]:
    """Sentences separated by empty lines; '#' comments skipped (XTREME drops them)."""
    block: _Block | None = None
    for number, line in _lines(path):
        if not line:
            if block is not None and block.words:
                yield block
            block = None
            continue
        if block is None:
            block = _Block(start=number)
        if not line.startswith("#"):
            _add_line(block, path, number, line)
        elif line.startswith("# sent_id"):
            block.sent_id = line.partition("=")[2].strip() or None
    if block is not None and block.words:
        yield block


# ---------------------------------------------------------------------------- the rule


def _ancestors(block: _Block, node: int) -> int:
    """networkx ``len(ancestors(G, node))`` over the basic + enhanced graph."""
    seen: set[int | None] = set()
    frontier: list[int | None] = [node]
    while frontier:
        current = frontier.pop()
        if current is None:
            continue
        for parent in block.parents.get(current, ()):
            if parent not in seen:
                seen.add(parent)
                frontier.append(parent)
    seen.discard(node)
    return len(seen)


def _span_head(block: _Block, path: Path, start: int, lang: str) -> int:
    """lib/conll.py _choose_spanhead_from_heuristics for the span of the token at ``start``."""
    end, form, number = block.fused[start]
    span = list(range(start, end + 1))
    missing = [i for i in span if i not in block.words]
    if missing:
        raise DataFormatError(path, number, f"multi-word token {form!r} lacks words {missing}")
    depths = [_ancestors(block, i) for i in span]
    highest = [i for i, d in zip(span, depths, strict=True) if d == min(depths)]
    if len(highest) == 1:
        return highest[0]
    precedence = POS_PRECEDENCE.get(lang, POS_PRECEDENCE["default"])
    for i in highest:
        if block.words[i].upos not in precedence:
            raise XtremeRuleError(
                path,
                number,
                f"multi-word token {form!r} ({start}-{end}): its highest words tie and UPOS "
                f"{block.words[i].upos!r} is not in XTREME's precedence list for {lang!r} "
                f"{list(precedence)}; XTREME's conllu_to_conll.py fails on this file",
            )
    return min(highest, key=lambda i: precedence.index(block.words[i].upos))


def _fused_sentence(block: _Block, path: Path, lang: str) -> Sentence:
    """Each multi-word token replaced by its surface form with its span head's UPOS."""
    heads = {start: _span_head(block, path, start, lang) for start in sorted(block.fused)}
    dropped = {
        i
        for start, head in heads.items()
        for i in range(start, block.fused[start][0] + 1)
        if i != head
    }
    surface = {head: block.fused[start][1] for start, head in heads.items()}
    tokens, tags = [], []
    for i in sorted(block.words):
        if i not in dropped:
            tokens.append(surface.get(i, block.words[i].form))
            tags.append(block.words[i].upos)
    return tokens, tags


def _keeps(tokens: Sequence[str]) -> bool:
    """udpos_preprocess _read_one_file: drop sentences whose forms are (almost) all '_'."""
    blanks = sum(token == "_" for token in tokens)
    return blanks == 0 or blanks < len(tokens) - 1


def _clean(token: str) -> str:
    """_read_one_file strips; remove_empty_space drops ZWNJ and inner spaces."""
    return "".join(token.strip().replace("\u200c", "").split(" "))


def language_of(path: str | Path) -> str:
    """The language code XTREME reads from a UD file name: ``fr_gsd-ud-train.conllu`` -> ``fr``."""
    return Path(path).name.split("_")[0]


def conllu_sentences(path: str | Path, lang: str | None = None) -> Iterator[Sentence]:
    """(tokens, UPOS tags) of each sentence of a UD CoNLL-U file, as XTREME's udpos data has them.

    ``lang`` picks the precedence list for tied multi-word tokens (default: the file name's
    prefix, as ``download_treebank`` passes it). Malformed lines raise ``DataFormatError`` naming
    file and line; a tie XTREME cannot resolve raises ``XtremeRuleError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoNLL-U file not found: {path}")
    lang = lang or language_of(path)
    for block in _blocks(path):
        tokens, tags = _fused_sentence(block, path, lang)
        if _keeps([t.strip() for t in tokens]):
            yield [_clean(t) for t in tokens], [t.strip() for t in tags]


def read_conllu(path: str | Path, *, column: str = "upos") -> Iterator[dict]:
    """The syntactic words of each sentence of a CoNLL-U file with their UPOS (or ``xpos``):
    multi-word ranges (``3-4 du``) and empty nodes (``8.1``) are not words (UD's own view, as
    TFDS and Hugging Face read treebanks; XTREME's udpos conversion, which keeps the fused
    forms, is ``conllu_sentences``). Example dicts ``{"id", "tokens", "tags", "line"}``."""
    if column not in ("upos", "xpos"):
        raise ValueError(f"column must be 'upos' or 'xpos', got {column!r}")
    path = Path(path)
    for count, block in enumerate(_blocks(path)):
        words = [block.words[i] for i in sorted(block.words)]
        if column == "upos":
            for word in words:
                if word.upos not in UPOS_TAGS:
                    raise DataFormatError(path, word.line, f"unknown UPOS {word.upos!r}; "
                                          f"expected one of {list(UPOS_TAGS)}")  # fmt: skip
        yield {"id": block.sent_id or str(count), "tokens": [w.form for w in words],
               "tags": [w.upos if column == "upos" else w.xpos for w in words],
               "line": min(w.line for w in words)}


# ------------------------------------------------------------------------------ writing


def split_of(path: str | Path) -> str | None:
    """udpos_preprocess: 'train' / 'dev' / 'test' in the file name, checked in that order."""
    name = Path(path).name
    return next((split for split in SPLITS if split in name), None)


def tsv_text(sentences: Iterable[Sentence], with_tags: bool = True) -> str:
    """XTREME's ``_write_files`` 'tsv' bytes: blank line between sentences, none at the end."""
    blocks = [
        "\n".join(f"{w}\t{t}" if with_tags else w for w, t in zip(*s, strict=True))
        for s in sentences
    ]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclasses.dataclass
class Conversion:
    """What ``convert_treebanks`` did: sentences per language and split, files read and skipped."""

    sentences: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)  # "file: reason"


def treebank_files(ud_dir: str | Path, languages: Iterable[str]) -> dict[str, list[Path]]:
    """``<ud_dir>/*/*.conllu`` per language (file-name prefix), in file-name order."""
    wanted = set(languages)
    found: dict[str, list[Path]] = {}
    for path in Path(ud_dir).glob("*/*.conllu"):
        if language_of(path) in wanted:
            found.setdefault(language_of(path), []).append(path)
    return {lang: sorted(paths, key=lambda p: p.name) for lang, paths in sorted(found.items())}


def _convert_language(
    lang: str, paths: Sequence[Path], report: Conversion
) -> dict[str, list[Sentence]]:
    data: dict[str, list[Sentence]] = {split: [] for split in SPLITS}
    for path in paths:
        split = split_of(path)
        if split is None:
            report.skipped.append(f"{path}: no train/dev/test in the file name")
            continue
        try:
            sentences = list(conllu_sentences(path, lang))
        except XtremeRuleError as error:  # XTREME's script fails: the file is absent there too
            report.skipped.append(f"{path}: {error}")
            continue
        data[split].extend(sentences)
        report.sources.setdefault(lang, []).append(str(path))
    return data


def convert_treebanks(
    ud_dir: str | Path,
    out_dir: str | Path,
    languages: Iterable[str],
    *,
    strip_test_labels: bool = False,
) -> Conversion:
    """Write ``<out_dir>/<split>-<lang>.tsv`` from an extracted ``ud-treebanks-v2.x`` directory.

    Each language is converted completely before any of its files is written, and each file
    appears atomically (temporary name, then rename): an error leaves no half-written file.
    Splits without sentences get no file, as in XTREME. The test split keeps its tags unless
    ``strip_test_labels`` (XTREME's own release strips them).
    """
    languages = list(languages)
    files = treebank_files(ud_dir, languages)
    missing = [lang for lang in languages if lang not in files]
    if missing:
        raise FileNotFoundError(f"{ud_dir}: no */<lang>_*.conllu for languages {missing}")
    report = Conversion()
    for lang, paths in files.items():
        data = _convert_language(lang, paths, report)
        for split, sentences in data.items():
            if sentences:
                with_tags = not (split == "test" and strip_test_labels)
                _write_atomic(Path(out_dir) / f"{split}-{lang}.tsv", tsv_text(sentences, with_tags))
        report.sentences[lang] = {split: len(s) for split, s in data.items() if s}
    return report
