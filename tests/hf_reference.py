"""Builders for small random Hugging Face XLM-R checkpoints (the independent reference)."""

from __future__ import annotations

import numpy as np

TINY_HF = dict(vocab_size=1002, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=128, max_position_embeddings=258, type_vocab_size=1,
               pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)


def hf_config(**overrides):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(**{**TINY_HF, **overrides})


def make_hf_model(cls_name: str, seed: int = 0, **config_overrides):
    """A randomly initialised transformers XLM-R model in eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(hf_config(**config_overrides))
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a swapped name shows up
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def padded_batch(vocab_size: int = 1002, seed: int = 0, lengths=(11, 7, 3),
                 max_len: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """``<s> ... </s>`` rows of different lengths, padded with 1."""
    rng = np.random.default_rng(seed)
    ids = np.ones((len(lengths), max_len), np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(4, vocab_size - 1, n)
        ids[row, 0], ids[row, n - 1] = 0, 2
    return ids, (ids != 1).astype(np.int32)
