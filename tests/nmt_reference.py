"""Small random Hugging Face M2M100 / NLLB-200 checkpoints (the independent reference)."""

from __future__ import annotations

import numpy as np

# Both families are M2M100ForConditionalGeneration. NLLB-200's config.json differs in its
# vocabulary (256206 with 202 language codes after the SentencePiece pieces), max positions (1024)
# and dropout; its layout (pre-LayerNorm, scaled shared embeddings, final layer norms) is M2M100's.
TINY = dict(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_position_embeddings=64, activation_function="relu",
            scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2)
FAMILIES = {
    "m2m100": dict(TINY),
    "nllb": dict(TINY, vocab_size=104, max_position_embeddings=128, dropout=0.1,
                 attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0,
                 decoder_layerdrop=0, init_std=0.02, tie_word_embeddings=True),
}


def make_hf_nmt(family: str, seed: int = 0, eos_boost: float = 0.0, embed_std: float | None = None,
                **overrides):
    """A random ``M2M100ForConditionalGeneration`` in eval mode (eager attention).

    Projections get ``1/sqrt(fan_in)`` weights (HF's 0.02 makes the encoder nearly invisible to
    the decoder), LayerNorms and biases non-trivial values (a swapped name shows up), and
    ``eos_boost`` is added to the ``</s>`` logit (through the decoder's final LayerNorm bias), so
    that decoding ends before ``max_length`` on some rows. ``embed_std`` redraws the shared
    embedding (larger logits than HF's 0.02 init gives).
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.M2M100Config(**{**FAMILIES[family], **overrides})
    model = transformers.M2M100ForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("proj.weight") or ".fc" in name:
                p.normal_(0.0, p.shape[1] ** -0.5)
        if embed_std is not None:
            model.model.shared.weight.normal_(0.0, embed_std)
        eos = model.model.shared.weight[config.eos_token_id]
        model.model.decoder.layer_norm.bias.add_(eos_boost * eos / eos.norm() ** 2)
    model.config._attn_implementation = "eager"
    return model.eval()


def source_batch(vocab_size: int, lengths=(9, 5, 2, 7), seed: int = 0, lang_id: int | None = None,
                 pad: int = 1, eos: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``[lang] tokens </s>`` rows of mixed lengths, right-padded with ``pad``."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), pad, np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(4, vocab_size - 10, n)
        if lang_id is not None:
            ids[row, 0] = lang_id
        ids[row, n - 1] = eos
    return ids, (ids != pad).astype(np.int32)
