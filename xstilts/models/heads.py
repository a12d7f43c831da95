"""Task heads on the XLM-R encoder, named like Hugging Face's so weights convert by a rename table.

Every task model nests the encoder (embeddings, layers and the RoBERTa pooler) under
``ENCODER_KEY = "roberta"``; the head lives beside it (``classifier``, ``qa_outputs``, ``lm_head``).
The STILTs transfer restores the ``roberta`` subtree and starts a fresh head.

``XLMRForSequenceClassification(use_pooler=True)`` is jiant's classifier: the pooler (dense + tanh
on ``<s>``) followed by the RoBERTa classification head (dense, tanh, out_proj). With
``use_pooler=False`` it is Hugging Face's ``XLMRobertaForSequenceClassification`` (head on ``<s>``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xstilts.models.xlmr import (
    BATCH,
    EMBED,
    LENGTH,
    MLP,
    VOCAB,
    DenseGeneral,
    XLMRConfig,
    XLMRModel,
    gelu_exact,
    layer_norm,
)

Array = jax.Array
ENCODER_KEY = "roberta"
LABELS = "labels"  # logical axis of a head's output units (replicated by the default rules)


def _encoder(config: XLMRConfig) -> XLMRModel:
    return XLMRModel(config, name=ENCODER_KEY)


class ClassificationHead(nn.Module):
    """RoBERTa classification head: dropout, dense, tanh, dropout, out_proj."""

    config: XLMRConfig
    num_labels: int

    @nn.compact
    def __call__(self, features: Array, *, deterministic: bool) -> Array:
        c = self.config
        x = nn.Dropout(c.hidden_dropout_prob)(features, deterministic=deterministic)
        x = jnp.tanh(DenseGeneral((c.hidden_size,), (EMBED, MLP), c, name="dense")(x))
        x = nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
        return DenseGeneral((self.num_labels,), (MLP, LABELS), c, name="out_proj")(x)


class XLMRForSequenceClassification(nn.Module):
    """Sentence (pair) classification: ``[B, L]`` -> logits ``[B, num_labels]``."""

    config: XLMRConfig
    num_labels: int
    use_pooler: bool = True

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 deterministic: bool = True) -> Array:
        encoder = _encoder(self.config)
        hidden = encoder(input_ids, attention_mask, deterministic=deterministic)
        features = encoder.pool(hidden) if self.use_pooler else hidden[:, 0]
        head = ClassificationHead(self.config, self.num_labels, name="classifier")
        return head(features, deterministic=deterministic).astype(jnp.float32)


class XLMRForTokenClassification(nn.Module):
    """Tagging (POS, NER): ``[B, L]`` -> logits ``[B, L, num_labels]``."""

    config: XLMRConfig
    num_labels: int

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 deterministic: bool = True) -> Array:
        c = self.config
        hidden = _encoder(c)(input_ids, attention_mask, deterministic=deterministic)
        hidden = nn.Dropout(c.hidden_dropout_prob)(hidden, deterministic=deterministic)
        logits = DenseGeneral((self.num_labels,), (EMBED, LABELS), c, name="classifier")(hidden)
        return logits.astype(jnp.float32)


class XLMRForQuestionAnswering(nn.Module):
    """Span extraction: ``[B, L]`` -> ``(start_logits, end_logits)``, each ``[B, L]``."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 deterministic: bool = True) -> tuple[Array, Array]:
        c = self.config
        hidden = _encoder(c)(input_ids, attention_mask, deterministic=deterministic)
        logits = DenseGeneral((2,), (EMBED, LABELS), c, name="qa_outputs")(hidden)
        logits = logits.astype(jnp.float32)
        return logits[..., 0], logits[..., 1]


class XLMRForMultipleChoice(nn.Module):
    """Multiple choice: ``[B, C, L]`` -> logits ``[B, C]`` (pooler output, dropout, linear)."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 deterministic: bool = True) -> Array:
        c = self.config
        batch, choices, length = input_ids.shape
        encoder = _encoder(c)
        hidden = encoder(input_ids.reshape(batch * choices, length),
                         attention_mask.reshape(batch * choices, length),
                         deterministic=deterministic)
        pooled = nn.Dropout(c.hidden_dropout_prob)(encoder.pool(hidden),
                                                   deterministic=deterministic)
        logits = DenseGeneral((1,), (EMBED, LABELS), c, name="classifier")(pooled)
        return logits.reshape(batch, choices).astype(jnp.float32)


class LMHead(nn.Module):
    """RoBERTa LM head: dense, GELU, LayerNorm, then the tied word-embedding decoder + bias."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, hidden: Array, word_embeddings: Array) -> Array:
        c = self.config
        dtype = jnp.dtype(c.dtype)
        x = gelu_exact(DenseGeneral((c.hidden_size,), (EMBED, MLP), c, name="dense")(hidden))
        x = layer_norm(c, name="layer_norm")(x)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               (VOCAB,)),
                          (c.vocab_size,), jnp.float32)
        logits = jnp.einsum("bld,vd->blv", x.astype(dtype), word_embeddings.astype(dtype))
        logits = nn.with_logical_constraint(logits, (BATCH, LENGTH, VOCAB))
        return (logits + bias.astype(dtype)).astype(jnp.float32)


class XLMRForMaskedLM(nn.Module):
    """Masked language modelling: ``[B, L]`` -> logits ``[B, L, vocab]`` (decoder tied)."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 deterministic: bool = True) -> Array:
        encoder = _encoder(self.config)
        hidden = encoder(input_ids, attention_mask, deterministic=deterministic)
        return LMHead(self.config, name="lm_head")(hidden, encoder.word_embedding_matrix())


def mean_pool(hidden: Array, attention_mask: Array) -> Array:
    """Mean over the attention mask, specials included (jiant's ``MeanPoolerHead``)."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    return (hidden.astype(jnp.float32) * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


class XLMRSentenceEmbedder(nn.Module):
    """Mean-pooled hidden state of one layer (0 = embeddings); XTREME retrieval uses 14 of Large."""

    config: XLMRConfig
    layer: int

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 deterministic: bool = True) -> Array:
        n = self.config.num_hidden_layers
        if not -n - 1 <= self.layer <= n:
            raise ValueError(f"layer {self.layer}: expected 0..{n} (0 = embeddings)")
        _, hidden = _encoder(self.config)(input_ids, attention_mask, deterministic=deterministic,
                                          output_hidden_states=True)
        return mean_pool(hidden[self.layer], attention_mask)


TASK_MODELS = {
    "classification": XLMRForSequenceClassification,
    "tagging": XLMRForTokenClassification,
    "qa": XLMRForQuestionAnswering,
    "multiple_choice": XLMRForMultipleChoice,
    "mlm": XLMRForMaskedLM,
}
