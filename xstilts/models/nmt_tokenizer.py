"""The M2M100 / NLLB-200 tokenizer (Hugging Face's slow ``M2M100Tokenizer`` / ``NllbTokenizer``).

Read from a checkpoint folder's tokenizer files, no transformers needed:

* NLLB: ``sentencepiece.bpe.model``; ids are the SentencePiece id + 1 (fairseq), ``<s>``=0,
  ``<pad>``=1, ``</s>``=2, ``<unk>``=3; the language codes (``yor_Latn``) and ``<mask>`` are the
  added tokens of ``tokenizer_config.json`` (``added_tokens_decoder``: id -> token). A source is
  ``[src_lang] pieces </s>`` (``legacy_behaviour``: ``pieces </s> [src_lang]``).
* M2M100: ``vocab.json`` (piece -> id) and ``sentencepiece.bpe.model``; the language tokens
  ``__yo__`` follow the vocabulary in the order of fairseq's list named by the config's
  ``language_codes`` (``m2m100``: 100 codes, ``wmt21``: 8), as ``M2M100Tokenizer`` numbers them
  (it does not write them to the files). A source is ``[__src__] pieces </s>``.

The translation target's first token is its language token (``forced_bos_token_id``). Added
tokens written in the text are split out before SentencePiece, as transformers does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import Any

SPM_FILE, VOCAB_FILE, CONFIG_FILE = "sentencepiece.bpe.model", "vocab.json", "tokenizer_config.json"
SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
# fairseq's M2M100 language lists (transformers' FAIRSEQ_LANGUAGE_CODES), in id order.
M2M100_LANGUAGE_CODES = {
    "m2m100": (
        "af am ar ast az ba be bg bn br bs ca ceb cs cy da de el en es et fa ff fi fr fy ga gd gl "
        "gu ha he hi hr ht hu hy id ig ilo is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml "
        "mn mr ms my ne nl no ns oc or pa pl ps pt ro ru sd si sk sl so sq sr ss su sv sw ta th tl "
        "tn tr uk ur uz vi wo xh yi yo zh zu").split(),
    "wmt21": "en ha is ja cs ru zh de".split(),
}


@dataclasses.dataclass(frozen=True)
class AddedToken:
    content: str
    lstrip: bool = False
    rstrip: bool = False


class NMTTokenizer:
    """Source ids, target-language ids and detokenization for an M2M100 / NLLB checkpoint."""

    def __init__(self, spm_path: str, added: dict[int, AddedToken], *,
                 vocab: dict[str, int] | None = None, legacy_behaviour: bool = False,
                 source: str = "", lang_ids: dict[str, int] | None = None) -> None:
        import sentencepiece as spm

        self.source = source or os.path.dirname(spm_path)
        self.sp = spm.SentencePieceProcessor()
        if not self.sp.Load(spm_path):
            raise ValueError(f"{spm_path}: not a SentencePiece model")
        self.vocab = vocab  # M2M100: piece -> id; NLLB: None (SentencePiece id + 1)
        self.id_to_piece = {i: p for p, i in vocab.items()} if vocab else None
        self.legacy_behaviour = legacy_behaviour
        self.added = dict(added)
        self.added_ids = {t.content: i for i, t in added.items()}
        non_codes = set(SPECIALS) | {"<mask>"}
        self.lang_ids = {t: i for t, i in self.added_ids.items() if t not in non_codes}
        self.special_ids = set(SPECIALS.values()) | set(added)
        if lang_ids is not None:  # M2M100: fairseq's list, whatever the files' added tokens
            self.lang_ids = dict(lang_ids)
            self.special_ids |= set(lang_ids.values())
        # transformers' trie splits the files' added tokens out of the text
        contents = sorted(self.added_ids, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents \
            else None

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> NMTTokenizer:
        folder = os.fspath(folder)
        spm_path = os.path.join(folder, SPM_FILE)
        config_path = os.path.join(folder, CONFIG_FILE)
        for path in (spm_path, config_path):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: missing (expected an NLLB/M2M100 tokenizer: "
                                        f"{SPM_FILE}, {CONFIG_FILE}, and {VOCAB_FILE} for M2M100)")
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path}: not valid JSON ({e})") from e
        decoder = config.get("added_tokens_decoder")
        if not isinstance(decoder, dict):
            raise ValueError(f"{config_path}: no 'added_tokens_decoder' (id -> token); expected "
                             "the file transformers >= 4.34 writes with the language codes")
        added = {}
        for key, entry in decoder.items():
            if not (key.isdigit() and isinstance(entry, dict) and "content" in entry):
                raise ValueError(f"{config_path}: added_tokens_decoder[{key!r}] is {entry!r}; "
                                 "expected an integer id and a dict with 'content'")
            added[int(key)] = AddedToken(entry["content"], bool(entry.get("lstrip")),
                                         bool(entry.get("rstrip")))
        vocab, lang_ids = None, None
        vocab_path = os.path.join(folder, VOCAB_FILE)
        if os.path.exists(vocab_path):
            with open(vocab_path, encoding="utf-8") as f:
                vocab = json.load(f)
            codes = config.get("language_codes", "m2m100")
            if codes not in M2M100_LANGUAGE_CODES:
                raise ValueError(f"{config_path}: language_codes {codes!r}; expected one of "
                                 f"{sorted(M2M100_LANGUAGE_CODES)}")
            lang_ids = {f"__{code}__": len(vocab) + i
                        for i, code in enumerate(M2M100_LANGUAGE_CODES[codes])}
        for content, want in SPECIALS.items():
            got = (vocab or {}).get(content, next((i for i, t in added.items()
                                                   if t.content == content), want))
            if got != want:
                raise ValueError(f"{folder}: {content} has id {got}; expected {want} (fairseq)")
        return cls(spm_path, added, vocab=vocab,
                   legacy_behaviour=bool(config.get("legacy_behaviour", False)), source=folder,
                   lang_ids=lang_ids)

    # --- ids -------------------------------------------------------------------------------
    @property
    def is_m2m100(self) -> bool:
        return self.vocab is not None

    def lang_token(self, lang: str) -> str:
        """``yo`` -> ``__yo__`` for M2M100; NLLB codes (``yor_Latn``) are tokens themselves."""
        if self.is_m2m100 and not lang.startswith("__"):
            return f"__{lang}__"
        return lang

    def lang_id(self, lang: str) -> int:
        token = self.lang_token(lang)
        if token not in self.lang_ids:
            raise KeyError(f"{self.source}: language {lang!r} (token {token!r}) is not in the "
                           f"tokenizer; it has {len(self.lang_ids)} codes, e.g. "
                           f"{self.languages[:8]}")
        return self.lang_ids[token]

    @property
    def languages(self) -> list[str]:
        return sorted(c[2:-2] if self.is_m2m100 and c.startswith("__") else c
                      for c in self.lang_ids)

    def _piece_id(self, piece: str) -> int:
        if self.vocab is not None:
            return self.vocab.get(piece, SPECIALS["<unk>"])
        sp_id = self.sp.PieceToId(piece)
        return sp_id + 1 if sp_id else SPECIALS["<unk>"]

    def tokenize_ids(self, text: str) -> list[int]:
        """The text's ids without language token and ``</s>``."""
        parts = self._split.split(text) if self._split else [text]
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:  # an added token written in the text
                ids.append(self.added_ids[part])
                continue
            prev = self.added[self.added_ids[parts[i - 1]]] if i else None
            nxt = self.added[self.added_ids[parts[i + 1]]] if i + 1 < len(parts) else None
            if prev is not None and prev.rstrip:
                part = part.lstrip()
            if nxt is not None and nxt.lstrip:
                part = part.rstrip()
            if part:
                ids.extend(self._piece_id(p) for p in self.sp.EncodeAsPieces(part))
        return ids

    def encode_source(self, text: str, src_lang: str, max_length: int | None = None) -> list[int]:
        """``[src_lang] ids </s>`` (legacy NLLB: ``ids </s> [src_lang]``), cut to ``max_length``
        by dropping text tokens (the special tokens stay, as HF's ``truncation=True``)."""
        ids, lang = self.tokenize_ids(text), self.lang_id(src_lang)
        if max_length is not None:
            ids = ids[:max(0, max_length - 2)]
        eos = SPECIALS["</s>"]
        return ids + [eos, lang] if self.legacy_behaviour else [lang] + ids + [eos]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens (language codes, ``</s>``, ``<pad>``) skipped."""
        pieces = []
        for i in map(int, ids):
            if i in self.special_ids:
                continue
            if self.id_to_piece is not None:
                pieces.append(self.id_to_piece.get(i, "<unk>"))
            else:
                pieces.append(self.sp.IdToPiece(i - 1))
        return self.sp.DecodePieces(pieces)

    def describe(self) -> dict[str, Any]:
        return {"kind": "m2m100" if self.is_m2m100 else "nllb", "source": self.source,
                "languages": len(self.languages), "legacy_behaviour": self.legacy_behaviour}
