"""The XLM-R tokenizer: SentencePiece with the fairseq id offset, plus a seqio ``Vocabulary``.

Example (run from the repository root; ``test_model.model`` is a 1000-piece English model)::

    >>> from xstilts.tokenization import XLMRTokenizer
    >>> tok = XLMRTokenizer("../shared/data/spm/test_model.model")  # or .from_pretrained(hf_dir)
    >>> tok.vocab_size, tok.mask_id
    (1002, 1001)
    >>> tok.encode("Hello world")                  # <s> ... </s>
    [0, 152, 89, 22, 888, 2]
    >>> tok.encode_pair("Hello", "world")          # <s> A </s></s> B </s>
    [0, 152, 89, 22, 2, 2, 888, 2]
    >>> tok.tokenize("Hi 世界")
    ['▁', 'H', 'i', '▁', '世界']
    >>> tok.encode_with_offsets("Hi 世界")          # character offsets, specials (0, 0)
    ([0, 5, 166, 26, 5, 3, 2], [(0, 0), (0, 1), (0, 1), (1, 2), (2, 3), (3, 5), (0, 0)])
    >>> tok.decode([0, 5, 166, 26, 5, 3, 2])       # skips <s> <pad> </s> <unk> <mask>, like HF
    'Hi'
    >>> tok.decode([0, 166, 26, 3, 2], skip_special_tokens=False)
    '<s>Hi<unk></s>'
    >>> tok.encode_words(["Hello", "", "world"])   # ids, word index per token (-1: special)
    ([0, 152, 89, 22, 3, 888, 2], [-1, 0, 0, 0, 1, 2, -1])
    >>> tok.batch_encode(["a", "bb cc"], max_length=8)["input_ids"]  # int32 [B, L], pad = 1
    array([[ 0, 12,  2,  1,  1,  1,  1,  1],
           [ 0, 81, 67, 79, 29,  2,  1,  1]], dtype=int32)

Id layout (identical to Hugging Face's ``XLMRobertaTokenizer``, transformers 4.57.6)::

    <s>=0  <pad>=1  </s>=2  <unk>=3  piece = SentencePiece id + 1  <mask> = len(spm) + 1
    vocab_size = len(spm) + 2

SentencePiece's own ``<unk>`` (spm id 0) becomes 3 (HF looks the unknown run's text up, which is
what ``XLMRTokenizer`` does too); its control pieces ``<s>``/``</s>`` (spm ids 1, 2, which would
land on 2, 3) are never emitted for text, and models without that layout are refused. The literal
strings ``<s>``, ``<pad>``, ``</s>``, ``<unk>`` and ``<mask>`` in input text are special tokens, as
in the HF slow tokenizer (``<mask>`` also swallows the whitespace on its left); pass
``split_special_tokens=True`` to encode them as ordinary text instead. Truncation is HF's
``longest_first`` from the right, with one difference: where HF cannot fit a single sequence
(``max_length`` below 3) it logs an error and returns it untruncated, we return ``<s></s>``.

Offsets (``encode_with_offsets``) are SentencePiece's own alignment of each piece to the original
text, converted from UTF-8 byte offsets to Python character offsets. A piece SentencePiece aligns
to no character (the dummy-prefix "▁" at the start of a text, or all but the last piece of a
character NFKC expands, "…" -> "...") gets the character at its position, as in HF's fast tokenizer
(``XLMRobertaTokenizerFast(...)(text, return_offsets_mapping=True)``). On Tatoeba text, ours equal
the fast tokenizer's for every token except where ours deliberately cover more of the original:

* characters the normaliser merges or drops (a + U+0308 -> "ä", zero-width non-joiner U+200C):
  ours include the combining/format characters, the fast tokenizer's stop before them;
* a run of several whitespace characters before a word: ours cover the whole run ("▁word" stands
  for all of it), the fast tokenizer's only its last character; at the start of a text, or of the
  text after a literal special token, ours start at the first non-space character.

In both conventions the span of "▁word" includes the space in front of the word, so an answer span
``text[start:end]`` may begin with whitespace; strip it. (HF's fast tokenizer also differs from its
slow one on a few Tamil/Malayalam vowel signs; our ids follow the slow one.)

seqio and TensorFlow are an optional extra (``pip install xstilts[data]``) that this module never
imports at import time: the lazy factory ``xlmr_vocabulary(path)``, or the attribute
``XLMRVocabulary`` (the class, built on first access through the module's ``__getattr__``), imports
them when used. seqio's own ``SentencePieceVocabulary`` would give raw SentencePiece ids, which are
off by one (and wrong for <unk>) for XLM-R.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from xstilts.models.xlmr import XLMRConfig

__all__ = ["SPM_FILENAME", "XLMRTokenizer", "check_compatible", "xlmr_vocabulary"]

SPM_FILENAME = "sentencepiece.bpe.model"  # the file name in Hugging Face XLM-R checkpoints
SPIECE_UNDERLINE = "\u2581"

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_FAIRSEQ_OFFSET = 1


def _load_spm(path: str | os.PathLike) -> spm.SentencePieceProcessor:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"SentencePiece model {path}: no such file (expected an XLM-R "
                         f"SentencePiece model, e.g. a checkpoint's {SPM_FILENAME})")
    sp = spm.SentencePieceProcessor()
    try:
        data = path.read_bytes()
        sp.LoadFromSerializedProto(data)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ text
        raise ValueError(f"{path} is not a SentencePiece model (expected a serialized "
                         f"SentencePiece ModelProto): {e}") from None
    if len(sp) < 3:
        raise ValueError(f"{path} is not a usable SentencePiece model: {len(sp)} pieces")
    # The fairseq mapping (id + 1) is only collision-free for the XLM-R layout: spm <unk>=0 and
    # control pieces <s>=1, </s>=2 (which would map onto </s>=2 and <unk>=3 but are never emitted).
    layout_ok = sp.unk_id() == 0 and sp.is_control(1) and sp.is_control(2)
    if not layout_ok:
        raise ValueError(
            f"SentencePiece model {path}: expected the XLM-R layout <unk>=0, <s>=1, </s>=2 "
            f"(control), found unk_id={sp.unk_id()}, pieces 1, 2 = "
            f"{sp.id_to_piece(1)!r}, {sp.id_to_piece(2)!r}")
    return sp


class XLMRTokenizer:
    """XLM-R tokenization with Hugging Face's ids, pair format, truncation and decoding."""

    def __init__(self, model_file: str | os.PathLike, *, split_special_tokens: bool = False):
        self.model_file = Path(model_file)
        self.sp = _load_spm(self.model_file)
        self.split_special_tokens = split_special_tokens
        n = len(self.sp)
        self._n_spm = n
        self._specials = {"<s>": BOS_ID, "<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID,
                          "<mask>": n + _FAIRSEQ_OFFSET}
        self._special_tokens = {v: k for k, v in self._specials.items()}
        # spm id -> XLM-R id. HF converts each piece *string*: the fairseq specials first, then
        # PieceToId + 1, with spm id 0 -> <unk>.
        table = np.arange(n, dtype=np.int64) + _FAIRSEQ_OFFSET
        table[0] = UNK_ID
        for piece, fid in self._specials.items():
            sid = self.sp.piece_to_id(piece)
            if sid != 0 and self.sp.id_to_piece(sid) == piece:
                table[sid] = fid
        self._table = table
        self._special_re = re.compile("(" + "|".join(re.escape(s) for s in self._specials) + ")")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> XLMRTokenizer:
        """Load ``directory/sentencepiece.bpe.model`` (a Hugging Face XLM-R checkpoint folder)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ValueError(f"{directory}: not a directory (expected a folder holding "
                             f"{SPM_FILENAME})")
        return cls(directory / SPM_FILENAME, **kwargs)

    # ----------------------------------------------------------------------------- ids
    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def mask_id(self) -> int:
        return self._n_spm + _FAIRSEQ_OFFSET

    @property
    def vocab_size(self) -> int:
        return self._n_spm + _FAIRSEQ_OFFSET + 1

    @property
    def all_special_ids(self) -> list[int]:
        return [BOS_ID, PAD_ID, EOS_ID, UNK_ID, self.mask_id]

    def __len__(self) -> int:
        return self.vocab_size

    def __getstate__(self) -> dict[str, Any]:  # SentencePieceProcessor does not pickle
        return {"model_file": str(self.model_file),
                "split_special_tokens": self.split_special_tokens}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_file"], split_special_tokens=state["split_special_tokens"])

    def __repr__(self) -> str:
        return f"XLMRTokenizer({str(self.model_file)!r}, vocab_size={self.vocab_size})"

    def piece_to_id(self, piece: str) -> int:
        if piece in self._specials:
            return self._specials[piece]
        sid = self.sp.piece_to_id(piece)
        return sid + _FAIRSEQ_OFFSET if sid else UNK_ID

    def id_to_piece(self, i: int) -> str:
        i = int(i)
        if i in self._special_tokens:
            return self._special_tokens[i]
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary of {self.model_file} "
                             f"(expected 0 <= id < {self.vocab_size})")
        return self.sp.id_to_piece(i - _FAIRSEQ_OFFSET)

    # ------------------------------------------------------------------------ encoding
    def _chunks(self, text: str) -> list[tuple[str, int, int, bool]]:
        """Split on literal special tokens like HF's trie: (chunk, start, end, is_special)."""
        if self.split_special_tokens or "<" not in text:
            return [(text, 0, len(text), False)]
        parts: list[list[Any]] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                parts.append([text[pos:m.start()], pos, m.start(), False])
            parts.append([m.group(0), m.start(), m.end(), True])
            pos = m.end()
        if pos < len(text):
            parts.append([text[pos:], pos, len(text), False])
        # <mask> is AddedToken(lstrip=True): HF rstrips the chunk on its left.
        for i, part in enumerate(parts):
            if part[3] and part[0] == "<mask>" and i > 0 and not parts[i - 1][3]:
                left = parts[i - 1]
                stripped = left[0].rstrip()
                part[1] -= len(left[0]) - len(stripped)
                left[0], left[2] = stripped, left[1] + len(stripped)
        return [tuple(p) for p in parts if p[0]]  # type: ignore[misc]

    def _piece_id(self, sid: int, piece: str) -> int:
        if sid:
            return int(self._table[sid])
        return self.piece_to_id(piece)  # an unknown piece: HF looks its surface string up

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = self.sp.encode(chunk)
        if 0 not in ids:
            return self._table[ids].tolist() if ids else []
        pieces = self.sp.encode(chunk, out_type=str)
        return [self._piece_id(s, p) for s, p in zip(ids, pieces, strict=True)]

    def _encode_chunk_offsets(self, chunk: str, start: int) -> list[tuple[int, int, int, str]]:
        proto = self.sp.encode(chunk, out_type="proto")
        ascii_only = chunk.isascii()
        if not ascii_only:
            # UTF-8 byte offset of every character boundary, to turn spm's byte offsets into chars.
            bounds = [0]
            for ch in chunk:
                bounds.append(bounds[-1] + len(ch.encode("utf-8")))
        out = []
        for p in proto.pieces:
            b, e = p.begin, p.end
            if not ascii_only:
                b = bisect.bisect_right(bounds, b) - 1
                e = bisect.bisect_left(bounds, e)
            if b == e and b < len(chunk):
                # spm aligns no character to this piece (the dummy-prefix "▁", or all but the last
                # piece of a character NFKC expands, "…" -> "..."): give it the character at its
                # position, as HF's fast tokenizer does.
                e = b + 1
            out.append((self._piece_id(p.id, p.piece), start + b, start + e, p.piece))
        return out

    def tokenize(self, text: str) -> list[str]:
        """Pieces as HF's ``tokenize``: literal special tokens kept whole, unknown runs as text."""
        out: list[str] = []
        for chunk, _, _, special in self._chunks(text):
            out.extend([chunk] if special else self.sp.encode(chunk, out_type=str))
        return out

    def encode_text(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}")
        out: list[int] = []
        for chunk, _, _, special in self._chunks(text):
            if special:
                out.append(self._specials[chunk])
            else:
                out.extend(self._encode_chunk(chunk))
        return out

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode_text(t) for t in texts]``, fast: every text without literal special tokens
        goes through one batched SentencePiece call (C++, no per-text Python) and one table
        lookup; a text with special-token text or an unknown piece takes ``encode_text``."""
        if isinstance(texts, str):
            raise TypeError("encode_texts expects a sequence of strings, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i}: expected a str, got {type(text).__name__}")
        plain = [i for i, text in enumerate(texts)
                 if self.split_special_tokens or "<" not in text]
        out: list[list[int] | None] = [None] * len(texts)
        if plain:
            rows = self.sp.encode([texts[i] for i in plain])
            ends = np.cumsum([len(row) for row in rows])
            sids = np.fromiter((t for row in rows for t in row), np.int64, count=int(ends[-1]))
            flat = self._table[sids].tolist()
            begins = ends - [len(row) for row in rows]
            for i, begin, end in zip(plain, begins.tolist(), ends.tolist(), strict=True):
                out[i] = flat[begin:end]
            # spm id 0 (an unknown run): HF looks its surface string up (see _encode_chunk)
            zeros = np.flatnonzero(sids == 0)
            if zeros.size:
                which = np.searchsorted(ends, zeros, side="right")
                rows_with = np.unique(which).tolist()
                pieces = dict(zip(rows_with, self.sp.encode(
                    [texts[plain[r]] for r in rows_with], out_type=str), strict=True))
                looked_up: dict[str, int] = {}
                starts = begins.tolist()
                for position, r in zip(zeros.tolist(), which.tolist(), strict=True):
                    piece = pieces[r][position - starts[r]]
                    if piece not in looked_up:
                        looked_up[piece] = self.piece_to_id(piece)
                    out[plain[r]][position - starts[r]] = looked_up[piece]  # type: ignore[index]
        return [ids if ids is not None else self.encode_text(texts[i])
                for i, ids in enumerate(out)]

    def num_special_tokens(self, pair: bool = False) -> int:
        return 4 if pair else 2

    def build_inputs(self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None) -> list[int]:
        """``<s> A </s>`` or ``<s> A </s></s> B </s>``."""
        if ids_b is None:
            return [BOS_ID, *ids_a, EOS_ID]
        return [BOS_ID, *ids_a, EOS_ID, EOS_ID, *ids_b, EOS_ID]

    def truncate(self, ids_a: list[int], ids_b: list[int] | None, max_length: int,
                 add_special_tokens: bool = True) -> tuple[list[int], list[int] | None]:
        """HF's ``longest_first`` truncation (from the right) to fit ``max_length`` in all."""
        n_special = self.num_special_tokens(ids_b is not None) if add_special_tokens else 0
        if max_length < n_special:
            raise ValueError(f"max_length {max_length} is shorter than the {n_special} special "
                             "tokens it must hold")
        remove = len(ids_a) + len(ids_b or ()) + n_special - max_length
        if remove <= 0:
            return ids_a, ids_b
        if ids_b is None:
            return ids_a[:-remove] if remove < len(ids_a) else [], None
        first = min(abs(len(ids_b) - len(ids_a)), remove)
        second = remove - first
        if len(ids_a) > len(ids_b):
            cut_a, cut_b = first + second // 2, second - second // 2
        else:
            cut_a, cut_b = second // 2, first + second - second // 2
        return (ids_a[:-cut_a] if cut_a > 0 else ids_a), (ids_b[:-cut_b] if cut_b > 0 else ids_b)

    def encode(self, text: str, add_special_tokens: bool = True,
               max_length: int | None = None) -> list[int]:
        """``<s> text </s>`` ids; ``max_length`` truncates (the specials count)."""
        ids = self.encode_text(text)
        if max_length is not None:
            ids, _ = self.truncate(ids, None, max_length, add_special_tokens)
        return self.build_inputs(ids) if add_special_tokens else ids

    def encode_pair(self, text_a: str, text_b: str, max_length: int | None = None) -> list[int]:
        """``<s> A </s></s> B </s>``; ``max_length`` truncates longest-first like HF."""
        a, b = self.encode_text(text_a), self.encode_text(text_b)
        if max_length is not None:
            a, b = self.truncate(a, b, max_length)
        return self.build_inputs(a, b)

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True
                            ) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and ``(start, end)`` character offsets into ``text`` per token; specials (0, 0).

        See the module docstring for how these compare with HF's fast tokenizer.
        """
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for chunk, start, end, special in self._chunks(text):
            if special:
                ids.append(self._specials[chunk])
                offsets.append((start, end))
                continue
            for fid, b, e, _ in self._encode_chunk_offsets(chunk, start):
                ids.append(fid)
                offsets.append((b, e))
        if add_special_tokens:
            ids = [BOS_ID, *ids, EOS_ID]
            offsets = [(0, 0), *offsets, (0, 0)]
        return ids, offsets

    def encode_words(self, words: Sequence[str], add_special_tokens: bool = True,
                     max_length: int | None = None) -> tuple[list[int], list[int]]:
        """Ids of pre-split words and, per token, the index of its word (-1 for specials).

        Each word is encoded on its own (with its "▁" prefix), as HF does with
        ``is_split_into_words=True``; the first token of word ``i`` is the first position whose
        word index is ``i`` (``first_subtoken_mask``). A word that yields no pieces (empty or
        whitespace-only) becomes one ``<unk>``, so every word keeps a token to carry its label;
        HF would drop it. ``max_length`` cuts tokens from the end (words may be cut off).
        """
        ids: list[int] = []
        word_ids: list[int] = []
        for i, word in enumerate(words):
            if not isinstance(word, str):
                raise TypeError(f"word {i}: expected a str, got {type(word).__name__}")
            piece_ids = self.encode_text(word) or [UNK_ID]
            ids.extend(piece_ids)
            word_ids.extend([i] * len(piece_ids))
        if max_length is not None:
            ids, _ = self.truncate(ids, None, max_length, add_special_tokens)
            word_ids = word_ids[:len(ids)]
        if add_special_tokens:
            ids, word_ids = self.build_inputs(ids), [-1, *word_ids, -1]
        return ids, word_ids

    @staticmethod
    def first_subtoken_mask(word_ids: Sequence[int]) -> list[int]:
        """1 at the first token of every word, 0 elsewhere (specials, continuation pieces)."""
        mask, prev = [], -1
        for w in word_ids:
            mask.append(int(w >= 0 and w != prev))
            prev = w if w >= 0 else prev
        return mask

    def batch_encode(self, texts: Sequence[str], texts_pair: Sequence[str] | None = None, *,
                     max_length: int | None = None, pad_to_max_length: bool = True
                     ) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask``, int32 ``[B, L]``, padded with ``<pad>`` = 1.

        With ``max_length``, every row is truncated to it and (``pad_to_max_length``) ``L`` is
        ``max_length``, a fixed shape for jit; otherwise ``L`` is the longest row.
        """
        if isinstance(texts, str):
            raise TypeError("batch_encode expects a sequence of strings, not one string")
        if texts_pair is not None and len(texts_pair) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(texts_pair)} paired texts")
        rows = [self.encode(t, max_length=max_length) if texts_pair is None
                else self.encode_pair(t, texts_pair[i], max_length=max_length)
                for i, t in enumerate(texts)]
        return self.pad(rows, max_length if (max_length and pad_to_max_length) else None)

    def pad(self, rows: Sequence[Sequence[int]], length: int | None = None
            ) -> dict[str, np.ndarray]:
        longest = max((len(r) for r in rows), default=0)
        length = longest if length is None else length
        if longest > length:
            raise ValueError(f"a row of {longest} tokens does not fit length {length}")
        input_ids = np.full((len(rows), length), PAD_ID, dtype=np.int32)
        attention_mask = np.zeros((len(rows), length), dtype=np.int32)
        for i, r in enumerate(rows):
            input_ids[i, :len(r)] = r
            attention_mask[i, :len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # ------------------------------------------------------------------------ decoding
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """HF's decode: pieces joined, "▁" -> space, stripped. Skipping drops <s> <pad> </s>
        <unk> <mask> (HF counts <unk> as special too)."""
        pieces = []
        for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).ravel():
            i = int(i)
            if skip_special_tokens and i in self._special_tokens:
                continue
            pieces.append(self.id_to_piece(i))
        return "".join(pieces).replace(SPIECE_UNDERLINE, " ").strip()

    # ------------------------------------------------------------------ compatibility
    def check_compatible(self, config: XLMRConfig) -> None:
        check_compatible(config, self)


def check_compatible(config: XLMRConfig, tokenizer: XLMRTokenizer) -> None:
    """Raise ValueError unless ``tokenizer``'s vocabulary fits ``config`` (an ``XLMRConfig``)."""
    if int(config.vocab_size) != tokenizer.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.model_file} has {tokenizer.vocab_size} ids "
            f"({tokenizer.vocab_size - 2} SentencePiece pieces + <pad> + <mask>) but the model "
            f"config expects vocab_size={config.vocab_size}")
    pad = getattr(config, "pad_token_id", PAD_ID)
    if pad != PAD_ID:
        raise ValueError(f"model config pad_token_id={pad}, but tokenizer {tokenizer.model_file} "
                         f"pads with {PAD_ID}")


# --------------------------------------------------------------------- seqio Vocabulary
_VOCAB_CLASS: type | None = None


def _vocabulary_class() -> type:
    """Build (once) the seqio Vocabulary subclass; imports seqio / TensorFlow here only."""
    global _VOCAB_CLASS
    if _VOCAB_CLASS is not None:
        return _VOCAB_CLASS
    try:
        import seqio
        import tensorflow as tf
        import tensorflow_text as tf_text
    except ImportError as e:
        raise ImportError(f"XLMRVocabulary needs seqio, tensorflow and tensorflow-text "
                          f"(pip install 'xstilts[data]'): {e}") from e

    class XLMRVocabulary(seqio.Vocabulary):
        """seqio Vocabulary with XLM-R ids (``XLMRTokenizer``'s), in Python and in TF ops.

        ``encode``/``encode_tf`` give the ids of the text without ``<s>``/``</s>`` and treat
        literal special-token strings as text (HF's ``split_special_tokens=True``): data
        pipelines should never turn a "<mask>" in a sentence into the mask token.
        ``decode``/``decode_tf`` follow HF's ``decode(skip_special_tokens=True)``, up to the first
        ``</s>`` (seqio's rule). ``pad_id`` is 1: seqio's stock feature converters pad with 0,
        so XLM-R batches must be padded with ``pad_id`` by the caller's converter.
        """

        def __init__(self, model_file: str | os.PathLike):
            self._tokenizer = XLMRTokenizer(model_file, split_special_tokens=True)
            self._tf_state: tuple[Any, Any, Any] | None = None
            super().__init__(extra_ids=0)

        @property
        def tokenizer(self) -> XLMRTokenizer:
            return self._tokenizer

        @property
        def model_file(self) -> Path:
            return self._tokenizer.model_file

        @property
        def bos_id(self) -> int:
            return BOS_ID

        @property
        def eos_id(self) -> int:
            return EOS_ID

        @property
        def unk_id(self) -> int:
            return UNK_ID

        @property
        def pad_id(self) -> int:
            return PAD_ID

        @property
        def mask_id(self) -> int:
            return self._tokenizer.mask_id

        @property
        def _base_vocab_size(self) -> int:
            return self._tokenizer.vocab_size

        def _encode(self, s: str) -> list[int]:
            return self._tokenizer.encode_text(s)

        def _decode(self, ids: Iterable[int]) -> str:
            return self._tokenizer.decode(ids, skip_special_tokens=True)

        def _tf(self) -> tuple[Any, Any, Any]:
            if self._tf_state is None:
                # Built eagerly even when first used inside a tf.data map or tf.function: state
                # made in a graph would be a SymbolicTensor, unusable by the next get_dataset.
                with tf.init_scope():
                    t = self._tokenizer
                    model = self.model_file.read_bytes()
                    sp_tf = tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32)
                    table = tf.constant(t._table, dtype=tf.int32)
                    pieces = [t.id_to_piece(i) for i in range(t.vocab_size)]
                    for i in t.all_special_ids:
                        pieces[i] = ""  # decode skips specials
                    self._tf_state = (sp_tf, table, tf.constant(pieces, dtype=tf.string))
            return self._tf_state

        def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
            sp_tf, table, _ = self._tf()
            spm_ids = sp_tf.tokenize(s)  # dense for a scalar, ragged for a batch
            lookup = lambda x: tf.gather(table, x)  # noqa: E731  (spm id -> XLM-R id)
            if isinstance(spm_ids, tf.RaggedTensor):
                return tf.ragged.map_flat_values(lookup, spm_ids)
            return lookup(spm_ids)

        def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
            _, _, pieces = self._tf()
            ids = tf.convert_to_tensor(ids)
            ids = tf.where((ids >= 0) & (ids < self._base_vocab_size), ids, UNK_ID)
            text = tf.strings.reduce_join(tf.gather(pieces, ids), axis=-1)
            text = tf.strings.regex_replace(text, SPIECE_UNDERLINE, " ")
            return tf.strings.strip(text)

        def __eq__(self, other: object) -> bool:
            return (isinstance(other, XLMRVocabulary)
                    and self._tokenizer.sp.serialized_model_proto()
                    == other._tokenizer.sp.serialized_model_proto())

        def __hash__(self) -> int:
            return hash(self._tokenizer.sp.serialized_model_proto())

        def __getstate__(self) -> dict[str, Any]:
            return {"model_file": str(self.model_file)}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__init__(state["model_file"])

        def __str__(self) -> str:
            return f"XLMRVocabulary({str(self.model_file)!r}, vocab_size={self.vocab_size})"

    XLMRVocabulary.__module__ = __name__
    XLMRVocabulary.__qualname__ = "XLMRVocabulary"
    _VOCAB_CLASS = XLMRVocabulary
    return XLMRVocabulary


def xlmr_vocabulary(model_file: str | os.PathLike) -> Any:
    """A seqio ``XLMRVocabulary`` over ``model_file``: a SentencePiece file, or a folder holding
    ``sentencepiece.bpe.model``. Imports seqio/TensorFlow (the ``data`` extra) on first use."""
    path = Path(model_file)
    if path.is_dir():
        path = path / SPM_FILENAME
    return _vocabulary_class()(path)


def __getattr__(name: str) -> Any:
    if name == "XLMRVocabulary":
        return _vocabulary_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
