"""A seeded synthetic multilingual world for the embedded demo (no downloads, seconds on a CPU).

One grammar of events ``(subject person, verb, object noun [+ adjective], [location])`` is
rendered into several languages, each with its own generated lexicon, script, word order (SVO,
SOV, VSO), adjective placement and pre-/postpositions. Languages differ in how much raw text they
have, so some are low-resource. Because every language renders the same events, "translation"
is exact: the translated intermediate tasks and the parallel sentences are the same events in
another language.

Produced, as plain dict examples in the reader shapes of ``readers.py``:

* ``mlm_corpus(lang)``: raw sentences (amount set by the language's resource level);
* intermediate tasks, English and translated: ``nli`` (3-way, XNLI/MNLI labels) and ``qa``
  (SQuAD-shaped span QA);
* target tasks in XTREME's shapes: ``paraphrase`` (PAWS-X-like pair classification: same event
  vs. roles swapped), ``tagging`` (UPOS or PAN-X NER tags), ``qa`` and ``parallel``
  (Tatoeba-like sentence pairs with English).

``write_files(directory)`` writes everything in the native XTREME/SQuAD formats, so the demo runs
through the same readers and registry as real data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xstilts.data.readers import NLI_LABELS

SPLITS = {"train": 0, "dev": 1, "test": 2}

_SCRIPTS = {
    "latin": None,
    "greek": dict(zip("abdeghiklmnoprstuvz", "αβδεγηιкλμνοπρστυϐζ", strict=True)),
    "cyrillic": dict(zip("abdeghiklmnoprstuvz", "абдегхиклмнопрстувз", strict=True)),
}

# English lexicon (the "source" language); other languages get generated words per concept.
_EN = {
    "verb": ["sees", "buys", "paints", "carries", "sells", "finds", "builds", "cleans", "opens",
             "draws"],
    "noun": ["house", "boat", "book", "horse", "table", "letter", "garden", "bridge", "song",
             "lamp", "window", "basket"],
    "adj": ["red", "old", "small", "big", "new", "green", "quiet", "heavy"],
    "prep": ["in"],
    "det": ["the"],
    "who": ["who"],
    "what": ["what"],
    "where": ["where"],
    "did": ["did"],
    "not": ["not"],
}  # fmt: skip
_PEOPLE = ["Ana", "Boris", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jana",
           "Kofi", "Lena", "Mika", "Nadia", "Omar", "Priya"]  # fmt: skip
_SURNAMES = ["Berg", "Costa", "Dunn", "Ek", "Fox", "Gil"]
_PLACES = ["Lagos", "Oslo", "Quito", "Riga", "Sofia", "Tunis", "Vaduz", "Zagreb", "Lima", "Kyoto"]


@dataclasses.dataclass(frozen=True)
class LanguageSpec:
    """How one synthetic language renders the shared grammar."""

    code: str
    order: str = "SVO"  # SVO | SOV | VSO
    adjective_after_noun: bool = False
    postpositions: bool = False
    script: str = "latin"  # latin | greek | cyrillic
    mlm_sentences: int = 2000  # raw text available: the resource level
    # Intermediate-task (NLI, QA) train data in this language, as a share of English's: the
    # real translate-train releases cover high-resource languages and few low-resource ones.
    translated_train: float = 1.0
    consonants: str = "bdgklmnprstvz"
    vowels: str = "aeiou"


DEFAULT_LANGUAGES: tuple[LanguageSpec, ...] = (
    LanguageSpec("en", "SVO", mlm_sentences=4000),
    LanguageSpec("xa", "SOV", adjective_after_noun=True, postpositions=True, mlm_sentences=2000),
    LanguageSpec("xb", "VSO", consonants="dgklmnrstz", vowels="aeiuo", mlm_sentences=1000,
                 translated_train=0.5),
    LanguageSpec("xc", "SVO", adjective_after_noun=True, script="greek", mlm_sentences=150,
                 translated_train=0.1),
    LanguageSpec("xd", "SOV", postpositions=True, script="cyrillic", consonants="bdgkmnprsv",
                 mlm_sentences=60, translated_train=0.0),
)  # fmt: skip
LOW_RESOURCE = ("xc", "xd")


@dataclasses.dataclass(frozen=True)
class Event:
    subject: str  # person name (one or two words)
    verb: int
    obj: int
    adjective: int | None = None
    location: str | None = None


def _stable(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


class SyntheticWorld:
    """Lexicons, grammar and generators of the synthetic world; everything is seeded."""

    def __init__(self, seed: int = 0, languages: Sequence[LanguageSpec] = DEFAULT_LANGUAGES):
        self.seed = seed
        self.languages = {spec.code: spec for spec in languages}
        if "en" not in self.languages:
            raise ValueError("the synthetic world needs English ('en') as the source language")
        self.lexicons = {code: self._lexicon(spec) for code, spec in self.languages.items()}

    # ---------------------------------------------------------------------------- lexicons
    def _lexicon(self, spec: LanguageSpec) -> dict[str, list[str]]:
        if spec.code == "en":
            return {key: list(words) for key, words in _EN.items()}
        rng = np.random.default_rng([self.seed, _stable("lexicon", spec.code)])
        used: set[str] = set()
        lexicon = {}
        for key, english in _EN.items():
            words = []
            for _ in english:
                while True:
                    syllables = (
                        rng.integers(1, 3)
                        if key in ("prep", "det", "did", "not")
                        else rng.integers(2, 4)
                    )
                    word = "".join(
                        spec.consonants[rng.integers(len(spec.consonants))]
                        + spec.vowels[rng.integers(len(spec.vowels))]
                        for _ in range(syllables)
                    )
                    if word not in used:
                        used.add(word)
                        break
                words.append(self._script(word, spec))
            lexicon[key] = words
        return lexicon

    @staticmethod
    def _script(word: str, spec: LanguageSpec) -> str:
        table = _SCRIPTS[spec.script]
        return word if table is None else "".join(table.get(c, c) for c in word)

    def _spec(self, lang: str) -> LanguageSpec:
        if lang not in self.languages:
            raise KeyError(
                f"unknown synthetic language {lang!r}; expected one of {sorted(self.languages)}"
            )
        return self.languages[lang]

    # ----------------------------------------------------------------------------- grammar
    def _rng(self, *parts: Any) -> np.random.Generator:
        return np.random.default_rng([self.seed, _stable(*parts)])

    def random_event(self, rng: np.random.Generator, location_probability: float = 0.5) -> Event:
        first = _PEOPLE[rng.integers(len(_PEOPLE))]
        subject = (
            f"{first} {_SURNAMES[rng.integers(len(_SURNAMES))]}" if rng.random() < 0.3 else first
        )
        return Event(
            subject=subject,
            verb=int(rng.integers(len(_EN["verb"]))),
            obj=int(rng.integers(len(_EN["noun"]))),
            adjective=int(rng.integers(len(_EN["adj"]))) if rng.random() < 0.5 else None,
            location=_PLACES[rng.integers(len(_PLACES))]
            if rng.random() < location_probability
            else None,
        )

    def _object_phrase(self, event: Event, lang: str) -> list[tuple[str, str, str]]:
        spec, lex = self._spec(lang), self.lexicons[lang]
        noun = [(lex["det"][0], "DET", "O")]
        core = [(lex["noun"][event.obj], "NOUN", "O")]
        if event.adjective is not None:
            adjective = (lex["adj"][event.adjective], "ADJ", "O")
            core = [*core, adjective] if spec.adjective_after_noun else [adjective, *core]
        return noun + core

    def _name(self, name: str, kind: str) -> list[tuple[str, str, str]]:
        return [
            (word, "PROPN", f"{'B' if i == 0 else 'I'}-{kind}")
            for i, word in enumerate(name.split())
        ]

    def render(
        self, event: Event, lang: str, place_first: bool = False
    ) -> list[tuple[str, str, str]]:
        """(word, UPOS, NER tag) per word of the sentence stating ``event`` in ``lang``;
        ``place_first`` fronts the place phrase (followed by a comma)."""
        spec, lex = self._spec(lang), self.lexicons[lang]
        subject = self._name(event.subject, "PER")
        verb = [(lex["verb"][event.verb], "VERB", "O")]
        obj = self._object_phrase(event, lang)
        place: list[tuple[str, str, str]] = []
        if event.location:
            prep = (lex["prep"][0], "ADP", "O")
            loc = self._name(event.location, "LOC")
            place = [*loc, prep] if spec.postpositions else [prep, *loc]
        order = {"SVO": subject + verb + obj, "SOV": subject + obj, "VSO": verb + subject + obj}[
            spec.order
        ]
        final_verb = verb if spec.order == "SOV" else []
        if place_first and place:
            words = place + [(",", "PUNCT", "O")] + order + final_verb
        else:
            words = order + place + final_verb
        return words + [(".", "PUNCT", "O")]

    def sentence(self, event: Event, lang: str, place_first: bool = False) -> str:
        return " ".join(word for word, _, _ in self.render(event, lang, place_first))

    # ------------------------------------------------------------------------------- tasks
    def mlm_corpus(self, lang: str, num_sentences: int | None = None) -> list[str]:
        """Raw text; by default as many sentences as the language's resource level allows."""
        count = self._spec(lang).mlm_sentences if num_sentences is None else num_sentences
        rng = self._rng("mlm", lang)
        return [self.sentence(self.random_event(rng), lang) for _ in range(count)]

    def _events(self, task: str, split: str, count: int) -> tuple[np.random.Generator, list[Event]]:
        rng = self._rng(task, SPLITS[split])  # independent of language: translations align
        return rng, [self.random_event(rng) for _ in range(count)]

    def nli(self, lang: str, num_examples: int, split: str = "train") -> list[dict]:
        """Premise/hypothesis pairs; entailment drops details, contradiction changes the object or
        the verb, neutral adds a detail the premise does not state."""
        rng, events = self._events("nli", split, num_examples)
        examples = []
        for index, event in enumerate(events):
            label = NLI_LABELS[index % 3]
            if label == "entailment":
                hypothesis = dataclasses.replace(event, adjective=None, location=None)
            elif label == "contradiction":
                if rng.random() < 0.5:
                    other = (event.obj + 1 + int(rng.integers(len(_EN["noun"]) - 1))) % len(
                        _EN["noun"]
                    )
                    hypothesis = dataclasses.replace(event, obj=other)
                else:
                    other = (event.verb + 1 + int(rng.integers(len(_EN["verb"]) - 1))) % len(
                        _EN["verb"]
                    )
                    hypothesis = dataclasses.replace(event, verb=other)
            else:
                premise_place = event.location
                event = dataclasses.replace(event, location=None)
                hypothesis = dataclasses.replace(event, location=premise_place or _PLACES[0])
            examples.append(
                {
                    "id": f"{split}-{index}",
                    "text_a": self.sentence(event, lang),
                    "text_b": self.sentence(hypothesis, lang),
                    "label": label,
                }
            )
        order = self._rng("nli-order", split).permutation(len(examples))
        return [examples[i] for i in order]

    def paraphrase(self, lang: str, num_examples: int, split: str = "train") -> list[dict]:
        """PAWS-X-like pairs with high word overlap: label "1" when the second sentence states the
        same event with its place phrase moved to the front, "0" when the subject is another
        person (the place phrase moved or not)."""
        rng = self._rng("paraphrase", SPLITS[split])
        examples = []
        for index in range(num_examples):
            event = self.random_event(rng, location_probability=1.0)
            same = index % 2 == 0
            other = event
            if not same:
                people = [p for p in _PEOPLE if p != event.subject.split()[0]]
                other = dataclasses.replace(event, subject=people[rng.integers(len(people))])
            front = same or rng.random() < 0.5
            examples.append(
                {
                    "id": f"{split}-{index}",
                    "text_a": self.sentence(event, lang),
                    "text_b": self.sentence(other, lang, place_first=front),
                    "label": "1" if same else "0",
                }
            )
        return examples

    def tagging(
        self, lang: str, num_examples: int, split: str = "train", scheme: str = "ner"
    ) -> list[dict]:
        """Sentences with UPOS (``scheme="pos"``) or PAN-X NER (``"ner"``) tags per word."""
        column = {"pos": 1, "ner": 2}[scheme]
        _, events = self._events(f"tagging-{scheme}", split, num_examples)
        examples = []
        for index, event in enumerate(events):
            words = self.render(event, lang)
            examples.append(
                {
                    "id": f"{split}-{index}",
                    "tokens": [w[0] for w in words],
                    "tags": [w[column] for w in words],
                }
            )
        return examples

    def qa(
        self, lang: str, num_examples: int, split: str = "train", sentences: int = 4
    ) -> list[dict]:
        """SQuAD-shaped span QA: a context of several events, a who/what/where question on one."""
        rng = self._rng("qa", SPLITS[split])
        lex = self.lexicons[lang]
        spec = self._spec(lang)
        examples = []
        for index in range(num_examples):
            people = rng.choice(len(_PEOPLE), size=sentences, replace=False)
            events = [
                dataclasses.replace(self.random_event(rng, 0.7), subject=_PEOPLE[p]) for p in people
            ]
            spans, parts, offset = [], [], 0
            for event in events:
                text = self.sentence(event, lang)
                spans.append(offset)
                parts.append(text)
                offset += len(text) + 1
            context = " ".join(parts)
            target = int(rng.integers(sentences))
            event = events[target]
            kinds = ["who", "what"] + (["where"] if event.location else [])
            kind = kinds[rng.integers(len(kinds))]
            words = [w for w, _, _ in self.render(event, lang)]
            if kind == "who":
                answer = event.subject
                question = [lex["who"][0], lex["verb"][event.verb]] + [
                    w for w, _, _ in self._object_phrase(event, lang)
                ]
            elif kind == "what":
                answer_words = [w for w, _, _ in self._object_phrase(event, lang)][1:]
                answer = " ".join(answer_words)
                question = [lex["what"][0], lex["did"][0], event.subject, lex["verb"][event.verb]]
            else:
                answer = event.location
                question = [lex["where"][0], lex["did"][0], event.subject, lex["verb"][event.verb]]
            if spec.order == "SOV":
                question = question[:1] + question[2:] + question[1:2]
            sentence = parts[target]
            start = spans[target] + _find_words(sentence, words, answer)
            examples.append(
                {
                    "id": f"{split}-{index}",
                    "title": f"synthetic-{lang}",
                    "context": context,
                    "question": " ".join(question) + " ?",
                    "answers": [{"text": answer, "answer_start": start}],
                    "is_impossible": False,
                }
            )
        return examples

    def parallel(self, lang: str, num_pairs: int, split: str = "test") -> list[dict]:
        """Tatoeba-like pairs: the same event in ``lang`` (``source``) and English (``target``)."""
        _, events = self._events("parallel", split, num_pairs)
        return [
            {
                "id": index,
                "source": self.sentence(event, lang),
                "target": self.sentence(event, "en"),
            }
            for index, event in enumerate(events)
        ]

    # ------------------------------------------------------------------------------- files
    def intermediate_size(self, lang: str, english_size: int) -> int:
        """Train examples of the intermediate tasks (NLI, QA) in ``lang``: 0 for a language
        without "translations", as the real translate-train releases leave most
        low-resource languages."""
        return int(english_size * self.languages[lang].translated_train)

    def write_files(
        self, directory: str | os.PathLike, sizes: dict[str, int] | None = None
    ) -> dict[str, Path]:
        """Write the world in native formats (XTREME tsv, SQuAD json, Tatoeba line files, MLM
        text) under ``directory``; each file appears atomically. Returns {name: path}."""
        sizes = {"train": 400, "dev": 100, "test": 100, **(sizes or {})}
        root = Path(directory)
        written: dict[str, Path] = {}

        def put(name: str, text: str) -> None:
            written[name] = _atomic_write(root / name, text)

        for lang in self.languages:
            put(f"mlm/{lang}.txt", "\n".join(self.mlm_corpus(lang)) + "\n")
            for split in SPLITS:
                n = sizes[split]
                # Intermediate train data (NLI, QA) only where "translations" exist.
                intermediate = self.intermediate_size(lang, n) if split == "train" else n
                rows = self.nli(lang, intermediate, split)
                if intermediate:
                    put(
                        f"nli/{split}-{lang}.tsv",
                        "".join(f"{e['text_a']}\t{e['text_b']}\t{e['label']}\n" for e in rows),
                    )
                rows = self.paraphrase(lang, n, split)
                put(
                    f"paraphrase/{split}-{lang}.tsv",
                    "".join(f"{e['text_a']}\t{e['text_b']}\t{e['label']}\n" for e in rows),
                )
                for scheme in ("pos", "ner"):
                    sentences = self.tagging(lang, n, split, scheme)
                    put(
                        f"{scheme}/{split}-{lang}.tsv",
                        "\n".join(
                            "".join(
                                f"{t}\t{g}\n" for t, g in zip(e["tokens"], e["tags"], strict=True)
                            )
                            for e in sentences
                        ),
                    )
                if intermediate:
                    qa = self.qa(lang, intermediate, split)
                    put(
                        f"qa/{split}-{lang}.json",
                        json.dumps({"version": "synthetic", "data": _squad_articles(qa)},
                                   ensure_ascii=False),
                    )
            if lang != "en":
                pairs = self.parallel(lang, sizes["test"])
                put(f"parallel/test.{lang}-en.{lang}", "".join(p["source"] + "\n" for p in pairs))
                put(f"parallel/test.{lang}-en.en", "".join(p["target"] + "\n" for p in pairs))
        return written


def _find_words(sentence: str, words: list[str], answer: str) -> int:
    """Character offset of ``answer`` (a run of whole words) in ``sentence``."""
    position = f" {sentence} ".find(f" {answer} ")
    if position < 0:
        raise ValueError(f"internal error: answer {answer!r} is not a word run of {sentence!r}")
    return position


def _squad_articles(examples: list[dict]) -> list[dict]:
    return [
        {
            "title": e["title"],
            "paragraphs": [
                {
                    "context": e["context"],
                    "qas": [{"id": e["id"], "question": e["question"], "answers": e["answers"]}],
                }
            ],
        }
        for e in examples
    ]


def _atomic_write(path: Path, text: str) -> Path:
    """Write via a temporary file in the same folder and rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
