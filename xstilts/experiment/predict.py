"""Model outputs for scoring and retrieval: jitted apply, restored checkpoints, embeddings."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xstilts import checkpoints as ckpt_lib
from xstilts import partitioning
from xstilts import train as train_lib
from xstilts import trainer as trainer_lib
from xstilts.evals import retrieval
from xstilts.models import heads
from xstilts.models.convert import load_hf_checkpoint, split_encoder
from xstilts.models.xlmr import XLMRConfig, XLMRModel


class Predictor:
    """Inference with one model config on one partitioner (one jitted function per kind)."""

    def __init__(self, model_config: XLMRConfig, partitioner: partitioning.Partitioner,
                 use_pooler: bool) -> None:
        self.model_config = model_config
        self.partitioner = partitioner
        self.use_pooler = use_pooler
        self._jitted: dict[tuple[Any, ...], Any] = {}

    def model(self, kind: str, num_labels: int) -> Any:
        return train_lib.build_model(kind, self.model_config, num_labels=num_labels,
                                     use_pooler=self.use_pooler)

    def _apply_fn(self, kind: str, num_labels: int) -> Any:
        key = ("apply", kind, num_labels)
        if key not in self._jitted:
            model = self.model(kind, num_labels)
            # Replicated outputs: every process can read them (multi-process runs score on all).
            self._jitted[key] = jax.jit(lambda p, ids, mask: model.apply(
                {"params": p}, ids, mask, deterministic=True),
                out_shardings=self.partitioner.replicated)
        return self._jitted[key]

    def outputs(self, params: Any, batches: Iterable[dict[str, np.ndarray]], kind: str,
                num_labels: int, count: int) -> list[Any]:
        """Model outputs per feature (host numpy) in feature order, from ordered batches
        carrying ``feature_index`` (-1: padding)."""
        apply = self._apply_fn(kind, num_labels)
        out: list[Any] = [None] * count
        with self.partitioner.context():
            for batch in batches:
                result = jax.device_get(apply(params, batch["input_ids"],
                                              batch["attention_mask"]))
                for row, index in enumerate(batch["feature_index"]):
                    if index >= 0:
                        out[index] = (tuple(o[row] for o in result) if isinstance(result, tuple)
                                      else result[row])
        return out

    def _trainer(self, model: Any, kind: str) -> trainer_lib.Trainer:
        tx, schedule = trainer_lib.make_optimizer(total_steps=1)
        return trainer_lib.Trainer(model, trainer_lib.task_loss(kind), tx, schedule,
                                   self.partitioner)

    def best_params(self, checkpoint_dir: Path, shape: trainer_lib.StepShape,
                    best_metric: str | None) -> tuple[Any, int]:
        """The kept checkpoint that ``best_metric`` ranks first (else the latest)."""
        checkpointer = ckpt_lib.Checkpointer(checkpoint_dir, ckpt_lib.CheckpointConfig(
            best_metric=best_metric), read_only=True)
        try:
            step = checkpointer.best_step() or checkpointer.latest_step()
            abstract = self._trainer(self.model(shape.kind, shape.num_labels),
                                     shape.kind).abstract_state(shape.input_shape)
            params = checkpointer.restore_params(abstract.params, step)
        finally:
            checkpointer.manager.close()
        return params, int(step)

    def encoder_params(self, encoder_from: str | None, pretrained: str | None
                       ) -> tuple[Any, int]:
        """(encoder params, step) of a checkpoint dir, or of the Hugging Face ``pretrained``."""
        if encoder_from is None:
            if pretrained is None:
                raise ValueError("retrieval needs an encoder: phase 0, phase 1 or pretrained")
            _, loaded = load_hf_checkpoint(pretrained)
            return split_encoder(loaded)[0], 0  # the encoder is at the top level there
        model = train_lib.build_model("mlm", self.model_config)
        abstract = self._trainer(model, "mlm").abstract_state((8, 8))
        source = ckpt_lib.Checkpointer(encoder_from, read_only=True)
        try:
            step = source.latest_step()
            encoder = source.restore_encoder(abstract.params[heads.ENCODER_KEY], step)
        finally:
            source.manager.close()
        return encoder, int(step)

    def embed_fn(self, layer: int) -> Any:
        """Jitted mean-pooled hidden state ``layer`` (0 = embeddings) of the encoder."""
        if not 0 <= layer <= self.model_config.num_hidden_layers:
            raise ValueError(f"retrieval_layer {layer}: expected 0.."
                             f"{self.model_config.num_hidden_layers} (0 = embeddings)")
        key = ("embed", layer)
        if key not in self._jitted:
            model = XLMRModel(self.model_config)

            def embed(params: Any, ids: Any, mask: Any) -> Any:
                _, hidden = model.apply({"params": params}, ids, mask,
                                        output_hidden_states=True)
                return retrieval.mean_pool(hidden[layer].astype(np.float32), mask)

            self._jitted[key] = jax.jit(embed, out_shardings=self.partitioner.replicated)
        return self._jitted[key]
