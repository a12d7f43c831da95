"""Interim demo (until the experiment driver lands): a real checkpoint round trip on the CPU.

Initialises a tiny XLM-R with a masked-LM head, exports it as a Hugging Face checkpoint
(``config.json`` + ``model.safetensors``), loads it back through the torch-free importer, runs a
padded batch, and prints per-layer hidden-state statistics and MLM logits. ``--preset base`` or
``large`` works too (random weights; large needs ~10 GB of RAM), as does ``--checkpoint DIR`` for
a real Hugging Face folder (e.g. a downloaded ``FacebookAI/xlm-roberta-base``).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np

from xstilts.models.convert import load_hf_checkpoint, save_hf_checkpoint, task_params
from xstilts.models.heads import XLMRForMaskedLM
from xstilts.models.xlmr import XLMRConfig, XLMRModel, count_params


def _batch(config: XLMRConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = (16, 11, 5)
    ids = np.full((len(lengths), 16), config.pad_token_id, np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(4, config.vocab_size - 1, n)
        ids[row, 0], ids[row, n - 1] = config.bos_token_id, config.eos_token_id
    return ids, (ids != config.pad_token_id).astype(np.int32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large"])
    parser.add_argument("--checkpoint", help="a Hugging Face XLM-R folder to load instead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoint
        if folder is None:
            config = XLMRConfig.preset(args.preset)
            ids, mask = _batch(config, args.seed)
            mlm = XLMRForMaskedLM(config)
            params = mlm.init(jax.random.key(args.seed), ids, mask)["params"]
            folder = save_hf_checkpoint(config, params, tmp)
            print(f"exported a random {args.preset} XLM-R ({count_params(params):,} parameters) "
                  f"to {folder}")
        config, params, report = load_hf_checkpoint(folder, return_report=True)
        print(f"loaded {report.source}: heads {report.heads}, missing {report.missing}, "
              f"unexpected {report.unexpected}")
        ids, mask = _batch(config, args.seed)
        _, hidden = jax.jit(lambda p, i, m: XLMRModel(config).apply(
            {"params": p}, i, m, output_hidden_states=True))(params, ids, mask)
        real = mask.astype(bool)
        print(f"batch {ids.shape[0]} x {ids.shape[1]}, {int(real.sum())} real tokens")
        print("layer    mean      std    max|h|")
        for layer, h in enumerate(hidden):
            h = np.asarray(h)[real]
            print(f"{layer:5d} {h.mean():8.4f} {h.std():8.4f} {np.abs(h).max():8.3f}")
        if "lm_head" in params:
            model = XLMRForMaskedLM(config)
            logits = np.asarray(model.apply({"params": task_params(params)}, ids, mask))
            top = logits[0, 1:6].argmax(-1)
            print(f"MLM logits {logits.shape}, top ids at positions 1-5 of row 0: {top.tolist()}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
