"""Train state, optimizer, task losses and partitioned train/eval steps (t5x's ``trainer.py``).

Tasks plug in as a loss function ``(model outputs, batch) -> LossOutput(loss_sum, weight,
correct)``: sums over the batch weighted by ``example_mask`` (and ``label_mask`` for token-level
tasks), so padding examples never count and microbatches add up to the full batch exactly.

Microbatching is a ``lax.scan`` over ``k`` slices inside one jitted step rather than
``optax.MultiSteps``: one call is one optimizer step (the step counter, schedule and checkpoints
stay in optimizer steps), the data pipeline keeps yielding whole global batches, no extra
gradient accumulator lives in the optimizer state between calls, and the weighted loss sums of
the slices are divided by the total weight once, which reproduces the full-batch gradient
(MultiSteps averages per-call mean gradients, which is wrong when slices carry different
numbers of real tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xstilts.data.preprocessors import max_predictions
from xstilts.models.xlmr import XLMRConfig
from xstilts.partitioning import Partitioner

Array = jax.Array
Batch = Mapping[str, Array]
PyTree = Any


# Train state ----------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position (kept in checkpoint metadata)."""

    step: Array  # int32 scalar: optimizer steps taken
    params: PyTree
    opt_state: PyTree
    rng: Array  # uint32[2] base key; step k uses fold_in(rng, k)


# Optimizer ------------------------------------------------------------------------------------
def decay_mask(params: PyTree) -> PyTree:
    """True where weight decay applies: every parameter except biases and LayerNorm (as HF)."""

    def keep(path: tuple[Any, ...], _: Any) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        names = [n for n in names if n != "value"]  # LogicallyPartitioned boxes
        return not ("bias" in names[-1:] or any(n == "LayerNorm" or n.endswith("LayerNorm")
                                                for n in names))

    return jax.tree_util.tree_map_with_path(keep, params)


@gin.configurable
def linear_warmup_decay(*, learning_rate: float, total_steps: int,
                        warmup_fraction: float = 0.1) -> optax.Schedule:
    """HF ``get_linear_schedule_with_warmup``: 0 -> lr over the warm-up, then linear to 0."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup = int(round(warmup_fraction * total_steps))
    decay = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup, 1))
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup), decay],
                                [warmup])


@gin.configurable
def make_optimizer(*, learning_rate: float = 1e-5, total_steps: int,
                   warmup_fraction: float = 0.1, weight_decay: float = 0.01, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, max_grad_norm: float | None = 1.0,
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (decay mask: no biases / LayerNorm), linear warm-up + decay, global-norm clipping."""
    schedule = linear_warmup_decay(learning_rate=learning_rate, total_steps=total_steps,
                                   warmup_fraction=warmup_fraction)
    parts = [] if max_grad_norm is None else [optax.clip_by_global_norm(max_grad_norm)]
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), schedule


# Task losses ----------------------------------------------------------------------------------
class LossOutput(NamedTuple):
    """Sums over the batch: weighted loss, total weight (examples or tokens), correct count."""

    loss_sum: Array
    weight: Array
    correct: Array


LossFn = Callable[[Any, Batch], LossOutput]


def _example_mask(batch: Batch, n: int) -> Array:
    if "example_mask" in batch:
        return batch["example_mask"].astype(jnp.float32)
    return jnp.ones((n,), jnp.float32)


def _xent(logits: Array, labels: Array) -> Array:
    logits = logits.astype(jnp.float32)
    safe = jnp.clip(labels, 0, logits.shape[-1] - 1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, safe)


def classification_loss(logits: Array, batch: Batch) -> LossOutput:
    """Sequence classification / multiple choice: ``logits [B, n]``, ``labels [B]``; packed
    classification rows: ``logits [B, S, n]``, ``labels`` and ``example_mask [B, S]`` (each
    example slot weighs 1, empty slots 0: the sums of the unpacked batch)."""
    w = _example_mask(batch, logits.shape[0])
    labels = batch["labels"]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return LossOutput(jnp.sum(_xent(logits, labels) * w), jnp.sum(w), jnp.sum(correct * w))


def token_loss(logits: Array, batch: Batch) -> LossOutput:
    """Tagging and MLM: ``logits [B, L, n]``, ``labels``/``label_mask [B, L]``.

    A token labelled ``IGNORE_LABEL`` (-1) never counts, even where ``label_mask`` is 1 (a tag
    the data could not give): it is masked, not trained as class 0."""
    labels = batch["labels"]
    w = (batch["label_mask"].astype(jnp.float32)
         * _example_mask(batch, logits.shape[0])[:, None] * (labels >= 0))
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return LossOutput(jnp.sum(_xent(logits, labels) * w), jnp.sum(w), jnp.sum(correct * w))


def span_loss(outputs: tuple[Array, Array], batch: Batch) -> LossOutput:
    """Extractive QA: mean of start and end cross-entropy per example (as HF)."""
    start_logits, end_logits = outputs
    w = _example_mask(batch, start_logits.shape[0])
    start, end = batch["start_positions"], batch["end_positions"]
    per_example = (_xent(start_logits, start) + _xent(end_logits, end)) / 2
    correct = ((jnp.argmax(start_logits, -1) == start)
               & (jnp.argmax(end_logits, -1) == end)).astype(jnp.float32)
    return LossOutput(jnp.sum(per_example * w), jnp.sum(w), jnp.sum(correct * w))


def mlm_max_predictions(length: int, mask_probability: float = 0.15) -> int:
    """Masked positions per row that the MLM head computes logits for: the data's cap
    (``preprocessors.max_predictions``, BERT's ``max_predictions_per_seq``), so the loss over
    them equals the loss over full logits. L=128 -> 40, L=256 -> 72, L=512 -> 120."""
    return max_predictions(length, mask_probability)


@dataclasses.dataclass(frozen=True)
class MaskedLMLoss:
    """MLM loss with logits only at masked positions (no 250k-way projection of the rest).

    ``prepare`` (inside the jitted step) turns ``label_mask [B, L]`` into the first
    ``max_predictions`` masked positions of each row, in order (``masked_positions``,
    ``masked_labels``, ``masked_weights [B, P]``); the model's MLM head gathers its hidden
    states there; ``__call__`` is ``token_loss`` over those ``[B, P, vocab]`` logits, equal to the
    full-logits loss on the same masks (up to ``max_predictions`` masked tokens per row).
    """

    max_predictions: int | None = None  # None: mlm_max_predictions(L)

    def predictions(self, length: int) -> int:
        p = self.max_predictions or mlm_max_predictions(length)
        if not 1 <= p <= length:
            raise ValueError(f"max_predictions {p}: expected 1..{length} (the length)")
        return p

    def prepare(self, batch: Batch) -> dict[str, Array]:
        label_mask = batch["label_mask"]
        length = label_mask.shape[-1]
        p = self.predictions(length)
        # top_k of (L - position) on masked tokens = the first p masked positions, in order.
        order = jnp.where(label_mask > 0, length - jnp.arange(length, dtype=jnp.int32), 0)
        _, positions = jax.lax.top_k(order, p)
        positions = positions.astype(jnp.int32)
        return {**batch, "masked_positions": positions,
                "masked_labels": jnp.take_along_axis(batch["labels"], positions, axis=1),
                "masked_weights": jnp.take_along_axis(label_mask, positions, axis=1)}

    def __call__(self, logits: Array, batch: Batch) -> LossOutput:
        if "masked_positions" not in batch:
            return token_loss(logits, batch)  # a model called on every position
        return token_loss(logits, {"labels": batch["masked_labels"],
                                   "label_mask": batch["masked_weights"],
                                   **({"example_mask": batch["example_mask"]}
                                      if "example_mask" in batch else {})})


TASK_LOSSES: dict[str, LossFn] = {
    "classification": classification_loss,
    "multiple_choice": classification_loss,
    "tagging": token_loss,
    "mlm": MaskedLMLoss(),
    "qa": span_loss,
}


def task_loss(task_type: str) -> LossFn:
    if task_type not in TASK_LOSSES:
        raise ValueError(f"unknown task type {task_type!r}: expected one of {sorted(TASK_LOSSES)}")
    return TASK_LOSSES[task_type]


# FLOPs ----------------------------------------------------------------------------------------
def train_flops_per_example(config: XLMRConfig, length: int, *, num_choices: int = 1,
                            mlm: bool = False, mlm_predictions: int | None = None) -> float:
    """Model FLOPs of one training example (maxtext's count: matmuls x 6, attention x 12).

    With ``mlm`` the tied vocabulary projection counts at ``mlm_predictions`` positions (the
    masked ones the MLM head computes), or at every position when that is None.
    """
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = length * num_choices
    flops = 6.0 * n * (4 * h * h + 2 * h * i) * tokens + 12.0 * n * h * length * tokens
    if mlm:
        positions = tokens if mlm_predictions is None else mlm_predictions
        flops += 6.0 * h * config.vocab_size * positions
    return flops


# Trainer --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepShape:
    """One train step's shape: task kind, labels, batch, length (and the multi-task head).

    The one description of the batch per kind that the run, the dry run and ``aot.py`` share.
    """

    kind: str
    num_labels: int
    batch_size: int
    length: int
    num_choices: int = 1
    head: str | None = None  # multi-task: this step's head of ``heads`` ((name, kind, labels))
    heads: tuple[tuple[str, str, int], ...] = ()
    packed: bool = False  # rows pack several sequences: the batch has ``segment_ids``
    segments: int = 0  # packed classification: examples per row at most (``max_segments``)

    def __post_init__(self) -> None:
        task_loss(self.kind)  # ValueError naming the kinds
        if self.packed and self.kind == "classification" and self.segments < 1:
            raise ValueError("a packed classification StepShape needs segments >= 1 (the "
                             "batcher's max_segments)")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``input_ids``' shape: ``(B, L)``, or ``(B, C, L)`` for multiple choice."""
        if self.kind == "multiple_choice":
            return (self.batch_size, self.num_choices, self.length)
        return (self.batch_size, self.length)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """DESIGN.md's batch keys for this kind and their shapes (every array is int32)."""
        b, n = self.batch_size, self.length
        shapes = {"input_ids": self.input_shape, "attention_mask": self.input_shape,
                  "example_mask": (b,)}
        if self.packed:
            shapes["segment_ids"] = self.input_shape
        if self.packed and self.kind == "classification":
            shapes["labels"] = shapes["example_mask"] = shapes["segment_starts"] = \
                (b, self.segments)
        elif self.kind in ("classification", "multiple_choice"):
            shapes["labels"] = (b,)
        elif self.kind in ("tagging", "mlm"):
            shapes["labels"] = shapes["label_mask"] = (b, n)
        elif self.kind == "qa":
            shapes["start_positions"] = shapes["end_positions"] = (b,)
        return shapes

    def batch(self, partitioner: Partitioner) -> dict[str, jax.ShapeDtypeStruct]:
        """The abstract global batch, sharded over ``partitioner``'s data axes."""
        def spec(shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
            sharding = partitioner.sharding(partitioner.batch_spec(len(shape)))
            return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)

        return {k: spec(s) for k, s in self.shapes().items()}


def _metric_sums(out: LossOutput, batch: Batch) -> dict[str, Array]:
    return {"loss_sum": out.loss_sum, "weight": out.weight, "correct": out.correct,
            "tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32)}


@dataclasses.dataclass
class Trainer:
    """Builds the sharded train state and the partitioned train / eval steps.

    ``model`` is a linen module called as ``model.apply({'params': p}, input_ids,
    attention_mask, deterministic=..., rngs={'dropout': k})`` (every ``xstilts.models.heads``
    task model and ``XLMRModel`` itself), plus ``segment_ids=`` for a batch of packed rows
    (that key present); ``loss_fn`` maps its outputs to a ``LossOutput``.
    """

    model: nn.Module
    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    partitioner: Partitioner
    num_microbatches: int = 1

    def __post_init__(self) -> None:
        if self.num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {self.num_microbatches}")
        self._compiled: dict[Any, Any] = {}

    # State --------------------------------------------------------------------------------
    def _init_inputs(self, input_shape: tuple[int, ...]) -> tuple[Array, Array]:
        ids = jnp.zeros((1, *input_shape[1:]), jnp.int32)
        return ids, jnp.ones_like(ids)

    def _boxed_abstract(self, input_shape: tuple[int, ...]) -> tuple[PyTree, PyTree]:
        with self.partitioner.context():
            boxed = jax.eval_shape(
                lambda: self.model.init(jax.random.PRNGKey(0),
                                        *self._init_inputs(input_shape))["params"])
            opt = jax.eval_shape(self.optimizer.init, boxed)
        return boxed, opt

    def state_shardings(self, input_shape: tuple[int, ...]) -> TrainState:
        boxed, opt = self._boxed_abstract(input_shape)
        p = self.partitioner
        return TrainState(step=p.replicated, params=p.boxed_shardings(boxed),
                          opt_state=p.boxed_shardings(opt), rng=p.replicated)

    def abstract_state(self, input_shape: tuple[int, ...]) -> TrainState:
        """``ShapeDtypeStruct``s with shardings: no memory (AOT compile, checkpoint targets)."""
        shardings = self.state_shardings(input_shape)
        shapes = jax.eval_shape(lambda: self._init_fn(jax.random.PRNGKey(0), input_shape))
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            shapes, shardings)

    def _init_fn(self, rng: Array, input_shape: tuple[int, ...]) -> TrainState:
        init_rng, state_rng = jax.random.split(rng)
        params = nn.unbox(self.model.init(init_rng, *self._init_inputs(input_shape))["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.optimizer.init(params), rng=state_rng)

    def init_state(self, rng: Array, input_shape: tuple[int, ...]) -> TrainState:
        """A freshly initialised, sharded state (``jit(init, out_shardings=...)``)."""
        shardings = self.state_shardings(input_shape)
        fn = jax.jit(lambda r: self._init_fn(r, input_shape), out_shardings=shardings)
        with self.partitioner.context():
            return fn(rng)

    def replace_params(self, state: TrainState, params: PyTree) -> TrainState:
        """New params with a fresh optimizer state, built sharded.

        A plain ``optimizer.init`` leaves AdamW's scalar ``count`` on one device, which a
        partitioned step rejects ("incompatible devices"); ``jit(init, out_shardings=...)``
        places every leaf.
        """
        shardings = jax.tree.map(lambda x: x.sharding, state.opt_state)
        with self.partitioner.context():
            opt_state = jax.jit(self.optimizer.init, out_shardings=shardings)(params)
        return state.replace(params=params, opt_state=opt_state)

    # Steps --------------------------------------------------------------------------------
    def _forward(self, params: PyTree, batch: Batch, *, deterministic: bool,
                 rng: Array | None) -> Any:
        rngs = None if deterministic else {"dropout": self._dropout_key(rng)}
        extra = {key: batch[key] for key in ("masked_positions", "segment_ids", "segment_starts")
                 if key in batch}
        return self.model.apply({"params": params}, batch["input_ids"],
                                batch["attention_mask"], deterministic=deterministic, rngs=rngs,
                                **extra)

    def _prepare(self, batch: Batch) -> Batch:
        """The loss's own inputs derived inside the step (MLM: the masked positions)."""
        prepare = getattr(self.loss_fn, "prepare", None)
        return batch if prepare is None else prepare(batch)

    def _dropout_key(self, rng: Array) -> Array:
        """The step's dropout key in the model config's ``dropout_rng`` implementation.

        The state's key stays a threefry ``uint32[2]`` (checkpoints and resume are unchanged);
        for ``rbg`` / ``unsafe_rbg`` its bits seed a key of that implementation, so dropout
        masks come from the (TPU hardware) RBG generator instead of threefry.
        """
        impl = getattr(getattr(self.model, "config", None), "dropout_rng", "threefry")
        if impl == "threefry":
            return rng
        return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl=impl)

    def _split_microbatches(self, batch: Batch) -> Batch:
        """``[B, ...]`` -> ``[k, B/k, ...]`` with slice j = rows j, j+k, ... (keeps rows local)."""
        k = self.num_microbatches
        out = {}
        for key, v in batch.items():
            if v.shape[0] % k:
                raise ValueError(f"batch key {key!r}: size {v.shape[0]} is not divisible by "
                                 f"num_microbatches {k}")
            v = v.reshape(v.shape[0] // k, k, *v.shape[1:]).swapaxes(0, 1)
            spec = self.partitioner.batch_spec(v.ndim - 1)
            out[key] = jax.lax.with_sharding_constraint(
                v, self.partitioner.sharding(jax.sharding.PartitionSpec(None, *spec)))
        return out

    def _train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        step_rng = jax.random.fold_in(state.rng, state.step)

        def loss_and_sums(params: PyTree, mb: Batch, rng: Array, *, mean: bool = False):
            mb = self._prepare(mb)
            out = self.loss_fn(self._forward(params, mb, deterministic=False, rng=rng), mb)
            # mean: the gradient of the weighted mean (the weight does not depend on params),
            # so the backward pass yields the normalised gradient; dividing afterwards cost
            # XLA:CPU one more pass over all gradients (materialised for the norm's reduce).
            loss = out.loss_sum / jax.lax.stop_gradient(jnp.maximum(out.weight, 1.0)) \
                if mean else out.loss_sum
            return loss, _metric_sums(out, mb)

        grad_fn = jax.grad(loss_and_sums, has_aux=True)
        if self.num_microbatches == 1:
            grads, sums = grad_fn(state.params, batch, step_rng, mean=True)
        else:
            mbs = self._split_microbatches(batch)

            def body(carry, xs):
                index, mb = xs
                g, s = grad_fn(state.params, mb, jax.random.fold_in(step_rng, index))
                return jax.tree.map(jnp.add, carry, (g, s)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            zero_sums = dict.fromkeys(("loss_sum", "weight", "correct", "tokens"),
                                      jnp.zeros((), jnp.float32))
            (grads, sums), _ = jax.lax.scan(
                body, (zeros, zero_sums), (jnp.arange(self.num_microbatches), mbs))
        denom = jnp.maximum(sums["weight"], 1.0)
        if self.num_microbatches > 1:  # the slices' weights add up only after the scan
            grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": sums["loss_sum"] / denom,
            "accuracy": sums["correct"] / denom,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": jnp.asarray(self.schedule(state.step), jnp.float32),
            **sums,
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def _eval_step(self, params: PyTree, batch: Batch) -> dict[str, Array]:
        batch = self._prepare(batch)
        out = self.loss_fn(self._forward(params, batch, deterministic=True, rng=None), batch)
        return _metric_sums(out, batch)

    def _batch_shardings(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return self.partitioner.batch_shardings(batch)

    def partitioned_train_step(self, state: TrainState, batch: Mapping[str, Any]):
        """The jitted step for these shapes: state donated, shardings in and out."""
        key = ("train", tuple((k, tuple(np.shape(v))) for k, v in sorted(batch.items())))
        if key not in self._compiled:
            state_sh = jax.tree.map(lambda x: x.sharding, state)
            self._compiled[key] = self.partitioner.partition(
                self._train_step, in_shardings=(state_sh, self._batch_shardings(batch)),
                out_shardings=(state_sh, self.partitioner.replicated), donate_argnums=(0,))
        return self._compiled[key]

    def train_step(self, state: TrainState, batch: Mapping[str, Any]
                   ) -> tuple[TrainState, dict[str, Array]]:
        self.check_batch(batch)
        return self.partitioned_train_step(state, batch)(state, batch)

    def eval_step(self, params: PyTree, batch: Mapping[str, Any]) -> dict[str, Array]:
        key = ("eval", tuple((k, tuple(np.shape(v))) for k, v in sorted(batch.items())))
        if key not in self._compiled:
            params_sh = jax.tree.map(lambda x: x.sharding, params)
            self._compiled[key] = self.partitioner.partition(
                self._eval_step, in_shardings=(params_sh, self._batch_shardings(batch)),
                out_shardings=self.partitioner.replicated)
        return self._compiled[key](params, batch)

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        missing = [k for k in ("input_ids", "attention_mask") if k not in batch]
        if missing:
            raise ValueError(f"batch is missing keys {missing}: got {sorted(batch)}")
        size = int(np.shape(batch["input_ids"])[0])
        self.partitioner.check_batch_size(size)
        k = self.num_microbatches
        if size % k or (size // k) % self.partitioner.num_batch_shards:
            raise ValueError(
                f"global batch {size} with num_microbatches {k}: each microbatch ({size}/{k}) "
                f"must be a whole multiple of the {self.partitioner.num_batch_shards} data shards")


# Host-side batch checks -----------------------------------------------------------------------
IGNORE_LABEL = -1  # xstilts.data.preprocessors.IGNORE_LABEL: no label (padding, untagged token)


class BadBatchError(ValueError):
    """A batch holds values its model cannot take (a label or token id out of range)."""


def _first_row(bad: np.ndarray) -> int:
    return int(np.argwhere(bad)[0][0])


def _first_bad(values: np.ndarray, bad: np.ndarray) -> str:
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    shown = sorted({int(v) for v in values[bad]})
    more = f" (and {len(shown) - 8} more)" if len(shown) > 8 else ""
    return (f"{int(bad.sum())} value(s) {shown[:8]}{more}, the first at index "
            f"{index[0] if len(index) == 1 else list(index)}")


def check_batch_values(batch: Mapping[str, Any], *, kind: str, num_labels: int,
                       vocab_size: int, where: str, max_length: int | None = None,
                       source: Callable[[int], str] | None = None) -> None:
    """Raise ``BadBatchError`` (naming ``where``) unless every value the loss or the embedding
    reads is in range: token ids in ``[0, vocab_size)``; on rows with ``example_mask`` 1,
    classification labels in ``[0, num_labels)``, multiple-choice labels in ``[0, choices)``,
    tags (where ``label_mask`` is 1) in ``[0, num_labels)`` or ``IGNORE_LABEL``, MLM targets in
    ``[0, vocab_size)``, QA positions in ``[0, length)``. Padding rows (``example_mask`` 0)
    may carry anything. numpy on the host: a few reductions per batch, before ``device_put``.
    ``source(row)``: where the first bad row comes from (task, split, file, example; see
    ``feature_converters.Provenance.describe``), named after ``where`` in parentheses.
    """
    def at(row: int) -> str:
        return where if source is None else f"{where} ({source(row)})"

    ids = np.asarray(batch["input_ids"])
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        raise BadBatchError(
            f"{at(_first_row(bad))}: input_ids hold {_first_bad(ids, bad)}, outside the model's "
            f"vocabulary [0, {vocab_size}) (MODEL_CONFIG vocab_size={vocab_size}): the data was "
            f"tokenized with another vocabulary than the model's; these ids would turn the loss "
            f"into NaN")
    if max_length is not None and ids.shape[-1] > max_length:
        mask = np.asarray(batch.get("attention_mask", np.ones_like(ids)))[..., max_length:]
        longer = mask.reshape(mask.shape[0], -1).any(axis=1)
        raise BadBatchError(f"{at(_first_row(longer) if longer.any() else 0)}: sequences of "
                            f"length {ids.shape[-1]}, but the model's positions allow at most "
                            f"{max_length} tokens")
    rows = np.asarray(batch["example_mask"]) != 0 if "example_mask" in batch else \
        np.ones(ids.shape[0], bool)
    padding = "rows with example_mask 0 (padding) may carry -1"
    if kind in ("classification", "multiple_choice"):
        if "labels" not in batch:
            raise BadBatchError(f"{where}: a {kind} batch needs 'labels' (keys {sorted(batch)})")
        n = int(ids.shape[1]) if kind == "multiple_choice" else int(num_labels)
        labels = np.asarray(batch["labels"])
        bad = rows & ((labels < 0) | (labels >= n))
        if bad.any():
            what = (f"{n} choices per example" if kind == "multiple_choice"
                    else f"NUM_LABELS={n}")
            missing = " (-1 is a missing label: a labelled split holds an example without "\
                "its label)" if (labels[bad] == IGNORE_LABEL).any() else ""
            raise BadBatchError(
                f"{at(_first_row(bad))}: {kind} labels hold {_first_bad(labels, bad)} on real "
                f"rows; {what} expects labels in [0, {n}){missing}; {padding}")
    elif kind in ("tagging", "mlm"):
        if "labels" not in batch or "label_mask" not in batch:
            raise BadBatchError(f"{where}: a {kind} batch needs 'labels' and 'label_mask' "
                                f"(keys {sorted(batch)})")
        labels = np.asarray(batch["labels"])
        weighted = rows[:, None] & (np.asarray(batch["label_mask"]) != 0)
        n = int(vocab_size) if kind == "mlm" else int(num_labels)
        low = 0 if kind == "mlm" else IGNORE_LABEL
        bad = weighted & ((labels < low) | (labels >= n))
        if bad.any():
            expected = (f"MLM targets in [0, {n}) (the vocabulary)" if kind == "mlm" else
                        f"tags in [0, {n}) (NUM_LABELS={n}) or {IGNORE_LABEL} (no tag)")
            raise BadBatchError(
                f"{at(_first_row(bad))}: {kind} labels hold {_first_bad(labels, bad)} where "
                f"label_mask is 1; expected {expected}; {padding}")
    elif kind == "qa":
        length = int(ids.shape[-1])
        for key in ("start_positions", "end_positions"):
            if key not in batch:
                raise BadBatchError(f"{where}: a qa batch needs {key!r} (keys {sorted(batch)})")
            pos = np.asarray(batch[key])
            bad = rows & ((pos < 0) | (pos >= length))
            if bad.any():
                raise BadBatchError(f"{at(_first_row(bad))}: {key} hold {_first_bad(pos, bad)}; "
                                    f"expected positions in [0, {length}) (0 = <s>: no "
                                    f"answer); {padding}")


def summarize_eval(sums: Mapping[str, Any]) -> dict[str, float]:
    """Metric sums (added over batches) -> loss and accuracy."""
    weight = max(float(sums["weight"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / weight, "accuracy": float(sums["correct"]) / weight,
            "weight": float(sums["weight"])}
