"""Build translate-train corpora with our JAX NMT model (M2M100 / NLLB-200).

    python -m xstilts.translate --task mnli --languages yo,tl --data_dir D \\
        --model facebook/nllb-200-distilled-600M [--output_dir O] [--max_examples N]

reads the task's English train split from ``D`` (as the task registry finds it) and writes, per
language, one file the existing readers load (``xstilts.translate_layouts``, the table of paths):
the layout of the official translate-train release where one exists (``mnli``: XTREME's TSV,
``pawsx``: the PAWS-X release's, ``squad_v1``: SQuAD JSON with the answers projected by
``xstilts.translate_squad``), else the English file's own layout under
``<dataset>/translate-train/<lang>/`` (``qqp``, ``anli`` = ``anli_r1..3``, and the multiple-choice
``hellaswag``, ``cosmosqa``, ``commonsenseqa``: ``xstilts.translate_records``,
``xstilts.translate_choice``); examples dropped (SQuAD answers not projected, empty or colliding
choices) are counted in the manifest. A language the official release has (``mnli.de``) is
written under ``O/translate-train-ours/`` and read as ``mnli_ours.de``; never onto the release's
path unless ``--at_release_path`` (``output_path``);

next to it ``<file>.manifest.json`` (model, its sha256, decoding settings, counts). The work is
cut in shards of ``--shard_size`` examples, each written atomically under ``<file>.parts/``: a
killed run started again skips the finished shards (the settings must be the same), and the
final file appears only once all shards are done. Sentences are decoded in length-sorted batches
padded to a few bucket lengths (few compilations), over the data axis of all local devices, bf16
on accelerators. Progress: a tqdm bar with examples/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from xstilts.data import sources, tasks
from xstilts.data.readers import DataFormatError
from xstilts.data.tables.intermediate import OURS
from xstilts.data.tables.translated import OURS_DIR, OursRow
from xstilts.decoding import DecodeSettings, generate
from xstilts.models.convert import resolve_checkpoint_dir
from xstilts.models.nmt_convert import load_nmt_checkpoint
from xstilts.models.nmt_tokenizer import NMTTokenizer
from xstilts.translate_layouts import GROUPS, LAYOUTS, TASKS

log = logging.getLogger(__name__)
ROWS: dict[str, OursRow] = {row.translate: row for row in OURS}  # --task (one layout) -> tasks

# XTREME language -> NLLB-200 (FLORES-200) code; M2M100 uses the XTREME code itself.
NLLB_CODES = {
    "af": "afr_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "bg": "bul_Cyrl", "bn": "ben_Beng",
    "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn", "es": "spa_Latn", "et": "est_Latn",
    "eu": "eus_Latn", "fa": "pes_Arab", "fi": "fin_Latn", "fr": "fra_Latn", "he": "heb_Hebr",
    "hi": "hin_Deva", "hu": "hun_Latn", "id": "ind_Latn", "it": "ita_Latn", "ja": "jpn_Jpan",
    "jv": "jav_Latn", "ka": "kat_Geor", "kk": "kaz_Cyrl", "ko": "kor_Hang", "ml": "mal_Mlym",
    "mr": "mar_Deva", "ms": "zsm_Latn", "my": "mya_Mymr", "nl": "nld_Latn", "pt": "por_Latn",
    "ru": "rus_Cyrl", "sw": "swh_Latn", "ta": "tam_Taml", "te": "tel_Telu", "th": "tha_Thai",
    "tl": "tgl_Latn", "tr": "tur_Latn", "ur": "urd_Arab", "vi": "vie_Latn", "wo": "wol_Latn",
    "yo": "yor_Latn", "zh": "zho_Hans",
}


@dataclasses.dataclass
class Translator:
    """A loaded checkpoint: tokenizer, config, params and the jit-compiled decoder."""

    folder: str
    settings: DecodeSettings
    batch_size: int = 32
    max_source_length: int = 256
    dtype: str | None = None
    devices: Sequence[jax.Device] | None = None  # the data axis; None: every local device

    def __post_init__(self) -> None:
        if self.dtype is None:
            self.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
        self.tokenizer = NMTTokenizer.from_pretrained(self.folder)
        self.config, self.params = load_nmt_checkpoint(self.folder, dtype=self.dtype)
        self.devices = list(self.devices or jax.local_devices())
        self.truncated = 0  # sources cut to max_source_length (counted into the manifest)
        if len(self.devices) > 1:  # data parallel: params replicated, batch rows split
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            mesh = Mesh(np.array(self.devices), ("data",))
            self.params = jax.device_put(self.params, NamedSharding(mesh, PartitionSpec()))
            self.row_sharding = NamedSharding(mesh, PartitionSpec("data"))
        else:
            self.row_sharding = None

    def code(self, lang: str) -> str:
        return lang if self.tokenizer.is_m2m100 else NLLB_CODES.get(lang, lang)

    def check_languages(self, langs: Sequence[str], src: str) -> None:
        for lang in [src, *langs]:
            try:
                self.tokenizer.lang_id(self.code(lang))
            except KeyError as error:  # it names the tokenizer file and its codes
                raise TranslateInputError(f"--languages {lang}: {error.args[0]}") from None

    def translate(self, texts: Sequence[str], src: str, tgt: str) -> list[str]:
        """Translations of ``texts`` in their order (batches sorted by length)."""
        full = [self.tokenizer.encode_source(t, self.code(src)) for t in texts]
        ids = [self.tokenizer.encode_source(t, self.code(src), self.max_source_length)
               if len(x) > self.max_source_length else x for t, x in zip(texts, full, strict=True)]
        self.truncated += sum(len(x) > self.max_source_length for x in full)
        target = self.tokenizer.lang_id(self.code(tgt))
        out: list[str] = [""] * len(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")
        rows = max(self.batch_size, len(self.devices))
        rows += -rows % len(self.devices)
        for start in range(0, len(order), rows):
            chunk = order[start:start + rows]
            width = _bucket(max(len(ids[i]) for i in chunk))
            batch = np.full((rows, width), self.config.pad_token_id, np.int32)
            for r, i in enumerate(chunk):
                batch[r, :len(ids[i])] = ids[i]
            batch[len(chunk):, 0] = self.config.eos_token_id  # filler rows: one real token
            mask = (batch != self.config.pad_token_id).astype(np.int32)
            if self.row_sharding is not None:
                batch, mask = (jax.device_put(x, self.row_sharding) for x in (batch, mask))
            tokens, _ = generate(self.config, self.params, batch, mask, target, self.settings)
            for r, i in enumerate(chunk):
                out[i] = _one_line(self.tokenizer.decode(tokens[r]))
        return out


def _bucket(length: int) -> int:
    """Pad widths: multiples of 16 up to 128, then of 64 (few distinct compiled shapes)."""
    step = 16 if length <= 128 else 64
    return -(-length // step) * step


def _one_line(text: str) -> str:
    """The release files are TSV without quoting: no tab or newline inside a field."""
    return " ".join(text.split())


def file_sha256(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_sha256(folder: str) -> str:
    """sha256 over the checkpoint's config, weights and tokenizer files."""
    names = ("config.json", "model.safetensors", "model.safetensors.index.json",
             "pytorch_model.bin", "sentencepiece.bpe.model", "tokenizer_config.json",
             "vocab.json")
    root = Path(folder)
    files = [root / n for n in names if (root / n).is_file()]
    files += sorted(root.glob("model-*.safetensors"))
    return file_sha256(files)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def translate_task(task: str, languages: Sequence[str], data_dir: str, output_dir: str,
                   translator: Translator, *, model_name: str, max_examples: int | None = None,
                   shard_size: int = 1000, allow_samples: bool = False,
                   progress: bool = True, at_release_path: bool = False) -> list[Path]:
    """Translate ``task``'s English train split into ``languages``; returns the files written.

    ``task`` is a key of ``LAYOUTS`` or of ``GROUPS`` (``anli``: its three rounds in turn). A
    language with an official release is written under ``output_dir/translate-train-ours/``
    (``output_path``), at the release's own path only with ``at_release_path``."""
    if task not in TASKS:
        raise TranslateInputError(f"--task {task!r}: expected one of {list(TASKS)}")
    return [path for name in GROUPS.get(task, (task,)) for path in _translate_one(
        name, languages, data_dir, output_dir, translator, model_name=model_name,
        max_examples=max_examples, shard_size=shard_size, allow_samples=allow_samples,
        progress=progress, at_release_path=at_release_path)]


class TranslateInputError(ValueError):
    """A request the translator cannot carry out as asked (task, input, unfinished shards)."""


class ReleaseFileError(FileExistsError):
    """Our translation would replace an official release file."""


# One line on the command line, no traceback: they name the file and what to do.
REPORTED_ERRORS = (TranslateInputError, ReleaseFileError, DataFormatError, FileNotFoundError)


def output_path(task: str, lang: str, output_dir: str | os.PathLike, *,
                at_release_path: bool = False) -> Path:
    """Where ``--task task`` writes ``lang``: ``output_dir/<layout path>``, or
    ``output_dir/translate-train-ours/<layout path>`` where an official release exists (the
    ``<dataset>_ours.<lang>`` task reads it there; an ``output_dir`` that is itself
    ``translate-train-ours/`` is not doubled). With ``at_release_path`` the release's own path,
    refused (``FileExistsError``) while an official file (no manifest of ours) is there."""
    row, root = ROWS[task], Path(output_dir)
    relative = row.output_path(lang, at_release_path=at_release_path)
    if root.name == OURS_DIR and relative.startswith(f"{OURS_DIR}/"):
        relative = relative[len(OURS_DIR) + 1:]
    out = root / relative
    manifest = out.with_name(out.name + ".manifest.json")
    if at_release_path and lang in row.official and out.exists() and not manifest.exists():
        raise ReleaseFileError(
            f"{out}: the official release of {row.dataset}.{lang} is there; our translation "
            f"never replaces it: drop --at_release_path (ours then goes to "
            f"{root / row.output_path(lang)}, the task {row.name(lang)}) or move the release away")
    return out


def _translate_one(task: str, languages: Sequence[str], data_dir: str, output_dir: str,
                   translator: Translator, *, model_name: str, max_examples: int | None,
                   shard_size: int, allow_samples: bool, progress: bool,
                   at_release_path: bool) -> list[Path]:
    layout = LAYOUTS[task]
    spec = tasks.get_task(layout.task)
    inputs = sources.resolve(spec, "train", data_dir, allow_samples=allow_samples)
    examples = list(sources.read(spec, "train", data_dir, allow_samples=allow_samples))
    units = layout.units(inputs, examples)
    if max_examples is not None:
        units = units[:max_examples]
    if not units:
        raise TranslateInputError(
            f"{inputs[0]}: no examples in the train split of {layout.task}")
    translator.check_languages(languages, "en")
    settings = {"model": model_name, "model_sha256": model_sha256(translator.folder),
                "input_files": [str(p) for p in inputs], "input_sha256": file_sha256(inputs),
                "units": len(units), "shard_size": shard_size,
                "decoding": dataclasses.asdict(translator.settings),
                "max_source_length": translator.max_source_length,
                "dtype": translator.dtype}
    outputs = {lang: output_path(task, lang, output_dir, at_release_path=at_release_path)
               for lang in languages}  # every refusal before any work
    written = []
    for lang in languages:
        out = outputs[lang]
        out.parent.mkdir(parents=True, exist_ok=True)
        parts = out.with_name(out.name + ".parts")
        parts.mkdir(exist_ok=True)
        recorded = parts / "settings.json"
        if recorded.exists():
            before = json.loads(recorded.read_text(encoding="utf-8"))
            if before != settings:
                changed = sorted(k for k in settings if before.get(k) != settings[k])
                raise TranslateInputError(
                    f"{parts}: unfinished shards of another run (differs in {changed}); delete "
                    f"the folder or rerun with its settings")
        else:
            _atomic_write(recorded, json.dumps(settings, indent=1))
        shards = range(0, len(units), shard_size)
        bar = tqdm(total=len(units), desc=f"{task} en->{lang}", unit="ex",
                   disable=not progress, file=sys.stderr)
        start, done_now, truncated_before = time.perf_counter(), 0, translator.truncated

        def translate(texts: Sequence[str], lang: str = lang) -> list[str]:
            return translator.translate(texts, "en", lang)

        for first in shards:
            shard = parts / f"shard-{first // shard_size:05d}.txt"
            chunk = units[first:first + shard_size]
            if not shard.exists():
                _atomic_write(shard, layout.translate(chunk, translate))
                done_now += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(ex_per_s=f"{done_now / max(time.perf_counter() - start, 1e-9):.1f}")
        bar.close()
        lines = [line for first in shards for line in _shard_lines(
            parts / f"shard-{first // shard_size:05d}.txt")]
        if len(lines) != len(units):
            raise RuntimeError(f"{parts}: {len(lines)} rows for {len(units)} examples; a shard "
                               "is damaged: delete it and rerun")
        text, counts = layout.assemble(lines)
        _atomic_write(out, text)
        manifest = {**settings, "task": ROWS[task].name(lang), "language": lang,
                    "source": "translate-train-ours", "file": str(out),
                    "file_sha256": file_sha256([out]), "rows": len(units), **counts,
                    "seconds_this_run": round(time.perf_counter() - start, 3),
                    "translated_this_run": done_now,
                    "truncated_sources_this_run": translator.truncated - truncated_before}
        _atomic_write(out.with_name(out.name + ".manifest.json"), json.dumps(manifest, indent=1))
        for shard in parts.iterdir():
            shard.unlink()
        parts.rmdir()
        log.info("%s: %d rows (%d translated now)", out, len(units), done_now)
        if manifest["truncated_sources_this_run"]:
            log.warning("%s: %d source sentence(s) longer than --max_source_length %d were cut "
                        "(counted in the manifest)", out, manifest["truncated_sources_this_run"],
                        translator.max_source_length)
        written.append(out)
    return written


def _shard_lines(path: Path) -> list[str]:
    """A shard's lines, split at "\\n" only (a kept English field may hold U+2028 or U+0085,
    which ``str.splitlines`` would also split at)."""
    text = path.read_bytes().decode("utf-8")
    return [line + "\n" for line in text.split("\n")[:-1]]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xstilts.translate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--languages", required=True, help="comma-separated XTREME codes: yo,tl")
    p.add_argument("--data_dir", required=True, help="where the English train split is")
    p.add_argument("--output_dir", help="where the translations go (default: --data_dir); a "
                   "language with an official release (mnli: XNLI's 14, squad_v1: XTREME's 10, "
                   "pawsx: PAWS-X's 6) goes under its translate-train-ours/ (task mnli_ours.de)")
    p.add_argument("--at_release_path", action="store_true",
                   help="write such a language at the release's own path instead (refused "
                   "while the release is there); the official task (mnli.de) refuses it, "
                   "mnli_ours.de reads it")
    p.add_argument("--model", default="facebook/nllb-200-distilled-600M",
                   help="Hugging Face checkpoint folder or hub id (M2M100 or NLLB-200)")
    p.add_argument("--max_examples", type=int,
                   help="the first N examples (SQuAD: paragraphs) of each file; anli: per round")
    p.add_argument("--shard_size", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_beams", type=int, default=4)
    p.add_argument("--max_length", type=int, default=200)
    p.add_argument("--max_source_length", type=int, default=256)
    p.add_argument("--dtype", help="compute dtype (default: float32 on CPU, bfloat16 elsewhere)")
    p.add_argument("--allow_samples", action="store_true",
                   help="read the data dir's sample files (tests, demos)")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    languages = [x.strip() for x in args.languages.split(",") if x.strip()]
    if not languages:
        p.error("--languages: expected at least one language code")
    folder = resolve_checkpoint_dir(args.model)
    translator = Translator(folder, DecodeSettings(num_beams=args.num_beams,
                                                   max_length=args.max_length),
                            batch_size=args.batch_size, max_source_length=args.max_source_length,
                            dtype=args.dtype)
    for path in translate_task(args.task, languages, args.data_dir,
                               args.output_dir or args.data_dir, translator,
                               model_name=args.model, max_examples=args.max_examples,
                               shard_size=args.shard_size, allow_samples=args.allow_samples,
                               progress=not args.no_progress,
                               at_release_path=args.at_release_path):
        print(path)
    return 0


def console_main(argv: Sequence[str] | None = None) -> int:
    """``main`` with the errors of ``REPORTED_ERRORS`` printed as one line, exit 1."""
    try:
        return main(argv)
    except REPORTED_ERRORS as error:
        print(f"python -m xstilts.translate: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(console_main())
