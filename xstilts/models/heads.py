"""Task heads on the XLM-R encoder, named like Hugging Face's so weights convert by a rename table.

Every task model nests the encoder (embeddings, layers and the RoBERTa pooler) under
``ENCODER_KEY = "roberta"``; the head lives beside it (``classifier``, ``qa_outputs``, ``lm_head``).
The STILTs transfer restores the ``roberta`` subtree and starts a fresh head.

``XLMRMultiTask`` is the multi-task model of intermediate training on a mixture of task kinds
(jiant's): the shared ``roberta`` encoder plus one head per task, each under its own key.

``XLMRForSequenceClassification(use_pooler=True)`` is jiant's classifier: the pooler (dense + tanh
on ``<s>``) followed by the RoBERTa classification head (dense, tanh, out_proj). With
``use_pooler=False`` it is Hugging Face's ``XLMRobertaForSequenceClassification`` (head on ``<s>``).
On packed rows (``segment_ids`` plus ``segment_starts [B, S]``, the position of each packed
example's ``<s>``; ``feature_converters.pack_batch``) the pooler and head run on each example's
``<s>``: logits ``[B, S, num_labels]``, each the example's logits alone in its own row.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xstilts.models import cpu_gemm
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
F32 = "float32"  # logits: float32 accumulation and output whatever the compute dtype
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
        return DenseGeneral((self.num_labels,), (MLP, LABELS), c, preferred_element_type=F32,
                            name="out_proj")(x)


def segment_first_tokens(hidden: Array, segment_starts: Array) -> Array:
    """``hidden [B, L, H]`` at each packed example's first token (``segment_starts [B, S]``):
    ``[B, S, H]``."""
    if segment_starts.ndim != 2 or segment_starts.shape[0] != hidden.shape[0]:
        raise ValueError(f"segment_starts: expected [batch {hidden.shape[0]}, S], got shape "
                         f"{segment_starts.shape}")
    return jnp.take_along_axis(hidden, segment_starts[..., None].astype(jnp.int32), axis=1)


def pooled_output(encoder: XLMRModel, hidden: Array, segment_starts: Array | None = None
                  ) -> Array:
    """The RoBERTa pooler on ``<s>``: ``[B, H]``, or per packed example ``[B, S, H]``."""
    if segment_starts is None:
        return encoder.pool(hidden)
    first = segment_first_tokens(hidden, segment_starts)
    batch, slots, width = first.shape
    return encoder.pool(first.reshape(batch * slots, 1, width)).reshape(batch, slots, -1)


def _check_packed(segment_ids: Array | None, segment_starts: Array | None) -> None:
    if segment_starts is not None and segment_ids is None:
        raise ValueError("segment_starts (packed classification rows) needs segment_ids: "
                         "without them the packed examples would attend to each other")


def task_head(config: XLMRConfig, kind: str, num_labels: int, use_pooler: bool, hidden: Array,
              *, pooled: Array | None, word_embeddings: Array | None, choices: int,
              deterministic: bool, masked_positions: Array | None = None,
              segment_starts: Array | None = None) -> Any:
    """The head of task ``kind`` on the encoder's ``hidden`` states (``[B*C, L, H]`` for multiple
    choice), as submodules of the calling module (``classifier``, ``qa_outputs``, ``lm_head``):
    the single-task models and ``TaskHead`` both call it inside their ``nn.compact`` method.
    ``pooled`` is the RoBERTa pooler's output (classification with the pooler, multiple choice),
    ``word_embeddings`` the tied decoder (MLM), ``masked_positions [B, P]`` the positions the
    MLM head computes logits at (all ``L`` when None), ``segment_starts [B, S]`` each packed
    example's ``<s>`` (classification: logits ``[B, S, n]``; ``pooled`` then ``[B, S, H]``).
    Output logits are float32 (the last matmul accumulates in float32 whatever the compute
    dtype)."""
    c = config
    if kind == "classification":
        if use_pooler:
            features = pooled
        else:
            features = hidden[:, 0] if segment_starts is None else \
                segment_first_tokens(hidden, segment_starts)
        head = ClassificationHead(c, num_labels, name="classifier")
        return head(features, deterministic=deterministic)
    if kind == "tagging":
        x = nn.Dropout(c.hidden_dropout_prob)(hidden, deterministic=deterministic)
        return DenseGeneral((num_labels,), (EMBED, LABELS), c, preferred_element_type=F32,
                            name="classifier")(x)
    if kind == "qa":
        logits = DenseGeneral((2,), (EMBED, LABELS), c, preferred_element_type=F32,
                              name="qa_outputs")(hidden)
        return logits[..., 0], logits[..., 1]
    if kind == "multiple_choice":
        x = nn.Dropout(c.hidden_dropout_prob)(pooled, deterministic=deterministic)
        logits = DenseGeneral((1,), (EMBED, LABELS), c, preferred_element_type=F32,
                              name="classifier")(x)
        return logits.reshape(-1, choices)
    if kind == "mlm":
        return LMHead(c, name="lm_head")(hidden, word_embeddings, masked_positions)
    raise ValueError(f"unknown task kind {kind!r}: expected one of {sorted(TASK_MODELS)}")


class XLMRForSequenceClassification(nn.Module):
    """Sentence (pair) classification: ``[B, L]`` -> logits ``[B, num_labels]``; packed rows
    (``segment_ids`` and ``segment_starts [B, S]``) -> ``[B, S, num_labels]``."""

    config: XLMRConfig
    num_labels: int
    use_pooler: bool = True

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 segment_ids: Array | None = None, segment_starts: Array | None = None,
                 deterministic: bool = True) -> Array:
        _check_packed(segment_ids, segment_starts)
        encoder = _encoder(self.config)
        hidden = encoder(input_ids, attention_mask, segment_ids=segment_ids,
                         deterministic=deterministic)
        pooled = pooled_output(encoder, hidden, segment_starts) if self.use_pooler else None
        return task_head(self.config, "classification", self.num_labels, self.use_pooler, hidden,
                         pooled=pooled, word_embeddings=None, choices=1,
                         deterministic=deterministic, segment_starts=segment_starts)


class XLMRForTokenClassification(nn.Module):
    """Tagging (POS, NER): ``[B, L]`` -> logits ``[B, L, num_labels]``."""

    config: XLMRConfig
    num_labels: int

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 segment_ids: Array | None = None, deterministic: bool = True) -> Array:
        hidden = _encoder(self.config)(input_ids, attention_mask, segment_ids=segment_ids,
                                       deterministic=deterministic)
        return task_head(self.config, "tagging", self.num_labels, False, hidden, pooled=None,
                         word_embeddings=None, choices=1, deterministic=deterministic)


class XLMRForQuestionAnswering(nn.Module):
    """Span extraction: ``[B, L]`` -> ``(start_logits, end_logits)``, each ``[B, L]``."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 segment_ids: Array | None = None, deterministic: bool = True
                 ) -> tuple[Array, Array]:
        hidden = _encoder(self.config)(input_ids, attention_mask, segment_ids=segment_ids,
                                       deterministic=deterministic)
        return task_head(self.config, "qa", 2, False, hidden, pooled=None, word_embeddings=None,
                         choices=1, deterministic=deterministic)


class XLMRForMultipleChoice(nn.Module):
    """Multiple choice: ``[B, C, L]`` -> logits ``[B, C]`` (pooler output, dropout, linear)."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 segment_ids: Array | None = None, deterministic: bool = True) -> Array:
        batch, choices, length = input_ids.shape
        encoder = _encoder(self.config)
        hidden = encoder(input_ids.reshape(batch * choices, length),
                         attention_mask.reshape(batch * choices, length),
                         segment_ids=None if segment_ids is None
                         else segment_ids.reshape(batch * choices, length),
                         deterministic=deterministic)
        return task_head(self.config, "multiple_choice", 1, True, hidden,
                         pooled=encoder.pool(hidden), word_embeddings=None, choices=choices,
                         deterministic=deterministic)


class LMHead(nn.Module):
    """RoBERTa LM head: dense, GELU, LayerNorm, then the tied word-embedding decoder + bias.

    With ``masked_positions [B, P]`` only those positions' hidden states go through the head
    (``[B, P, vocab]`` logits): the vocabulary projection is most of an MLM step's FLOPs.
    """

    config: XLMRConfig

    @nn.compact
    def __call__(self, hidden: Array, word_embeddings: Array,
                 masked_positions: Array | None = None) -> Array:
        c = self.config
        dtype = jnp.dtype(c.dtype)
        if masked_positions is not None:
            if masked_positions.ndim != 2 or masked_positions.shape[0] != hidden.shape[0]:
                raise ValueError(f"masked_positions: expected [batch {hidden.shape[0]}, P], "
                                 f"got shape {masked_positions.shape}")
            hidden = jnp.take_along_axis(hidden, masked_positions[..., None].astype(jnp.int32),
                                         axis=1)
        x = gelu_exact(DenseGeneral((c.hidden_size,), (EMBED, MLP), c, name="dense")(hidden))
        x = layer_norm(c, name="layer_norm")(x)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               (VOCAB,)),
                          (c.vocab_size,), jnp.float32)
        logits = cpu_gemm.dot_general(x.astype(dtype), word_embeddings.astype(dtype),  # bld,vd
                                      (((2,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        logits = nn.with_logical_constraint(logits, (BATCH, LENGTH, VOCAB))
        return logits + bias


class XLMRForMaskedLM(nn.Module):
    """Masked language modelling: ``[B, L]`` -> logits ``[B, L, vocab]`` (decoder tied), or
    ``[B, P, vocab]`` at ``masked_positions [B, P]``. Rows may pack several documents
    (``segment_ids``, ``XLMRModel``): the loss is per token, so packing changes nothing else."""

    config: XLMRConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 segment_ids: Array | None = None, deterministic: bool = True,
                 masked_positions: Array | None = None) -> Array:
        encoder = _encoder(self.config)
        hidden = encoder(input_ids, attention_mask, segment_ids=segment_ids,
                         deterministic=deterministic)
        return task_head(self.config, "mlm", 2, False, hidden, pooled=None,
                         word_embeddings=encoder.word_embedding_matrix(), choices=1,
                         deterministic=deterministic, masked_positions=masked_positions)


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


# Multi-task (jiant's MultiTaskModel: one shared encoder, one head per task) -----------------------
def head_key(name: str) -> str:
    """The parameter key of a head: ``name`` with every character outside ``[A-Za-z0-9_]`` (task
    names have dots) replaced by ``_``."""
    key = re.sub(r"\W", "_", name, flags=re.ASCII)
    return key if key and not key[0].isdigit() else f"head_{key}"


class TaskHead(nn.Module):
    """The head of one task kind, with the same submodules (names, shapes, axes) as the
    single-task model of ``TASK_MODELS[kind]`` has beside its encoder."""

    config: XLMRConfig
    kind: str
    num_labels: int = 2
    use_pooler: bool = True

    @nn.compact
    def __call__(self, hidden: Array, *, pooled: Array | None, word_embeddings: Array | None,
                 choices: int, deterministic: bool, masked_positions: Array | None = None,
                 segment_starts: Array | None = None) -> Any:
        return task_head(self.config, self.kind, self.num_labels, self.use_pooler, hidden,
                         pooled=pooled, word_embeddings=word_embeddings, choices=choices,
                         deterministic=deterministic, masked_positions=masked_positions,
                         segment_starts=segment_starts)


class XLMRMultiTask(nn.Module):
    """One shared encoder (``roberta``) and one head per task (jiant's multi-task model).

    ``heads`` lists ``(name, kind, num_labels)``; head ``name``'s parameters live under
    ``head_key(name)`` with exactly the structure of the single-task model's head, so
    ``{"roberta": p["roberta"], **p[head_key(name)]}`` are that model's parameters.
    ``task=name`` (``model.clone(task=name)``) computes only that head, with the single-task
    model's inputs and outputs (multiple choice takes ``[B, C, L]``); ``task=None`` (use it to
    ``init``) runs every head on ``[B, L]`` inputs and returns ``{name: outputs}``.
    ``segment_starts`` (packed classification rows): only with classification heads chosen.
    """

    config: XLMRConfig
    heads: tuple[tuple[str, str, int], ...]
    task: str | None = None
    use_pooler: bool = True

    def __post_init__(self) -> None:
        keys: dict[str, str] = {}
        for entry in self.heads:
            if len(entry) != 3:
                raise ValueError(f"heads entry {entry!r}: expected (name, kind, num_labels)")
            name, kind, _ = entry
            if kind not in TASK_MODELS:
                raise ValueError(f"head {name!r}: kind {kind!r} not in {sorted(TASK_MODELS)}")
            key = head_key(name)
            if key == ENCODER_KEY or key in keys:
                clash = ENCODER_KEY if key == ENCODER_KEY else repr(keys[key])
                raise ValueError(f"head {name!r}: its key {key!r} clashes with {clash}")
            keys[key] = name
        if not keys:
            raise ValueError("XLMRMultiTask needs at least one head")
        if self.task is not None and self.task not in keys.values():
            raise ValueError(f"task {self.task!r} is not one of the heads {list(keys.values())}")
        super().__post_init__()

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array, *,
                 segment_ids: Array | None = None, deterministic: bool = True,
                 masked_positions: Array | None = None,
                 segment_starts: Array | None = None) -> Any:
        c = self.config
        chosen = [h for h in self.heads if self.task is None or h[0] == self.task]
        _check_packed(segment_ids, segment_starts)
        other = sorted({k for _, k, _ in chosen if k != "classification"})
        if segment_starts is not None and other:
            raise ValueError(f"segment_starts (packed classification rows) with heads of kind "
                             f"{other}: only classification heads read packed examples")
        lead = input_ids.shape[:-1]
        choices = lead[1] if len(lead) == 2 else 1
        encoder = _encoder(c)
        hidden = encoder(input_ids.reshape(-1, input_ids.shape[-1]),
                         attention_mask.reshape(-1, attention_mask.shape[-1]),
                         segment_ids=None if segment_ids is None
                         else segment_ids.reshape(-1, segment_ids.shape[-1]),
                         deterministic=deterministic)
        needs_pool = any(k == "multiple_choice" or (k == "classification" and self.use_pooler)
                         for _, k, _ in chosen)
        pooled = pooled_output(encoder, hidden, segment_starts) if needs_pool else None
        embeddings = encoder.word_embedding_matrix() if any(k == "mlm" for _, k, _ in chosen) \
            else None
        outputs = {}
        for name, kind, num_labels in chosen:
            head = TaskHead(c, kind, num_labels, self.use_pooler, name=head_key(name))
            outputs[name] = head(hidden, pooled=pooled, word_embeddings=embeddings,
                                 choices=choices, deterministic=deterministic,
                                 masked_positions=masked_positions if kind == "mlm" else None,
                                 segment_starts=segment_starts)
        return outputs if self.task is None else outputs[self.task]
