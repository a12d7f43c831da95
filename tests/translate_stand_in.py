"""A stand-in translator for the translate tests (not a test module)."""

from __future__ import annotations

from xstilts.decoding import DecodeSettings


class UpperCase:
    """``str.upper`` as the translation: paths, layouts and refusals need no model; every SQuAD
    answer projects and no multiple-choice example is dropped, so a registered task must read
    back every row."""

    max_source_length, dtype, truncated = 64, "float32", 0

    def __init__(self, folder) -> None:
        self.folder, self.settings = str(folder), DecodeSettings()

    def check_languages(self, langs, src) -> None:
        return None

    def translate(self, texts, src, tgt) -> list[str]:
        return [t.upper() for t in texts]
