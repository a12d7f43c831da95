"""Parity of the Flax XLM-R and its heads with Hugging Face's PyTorch XLM-R (the reference)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import hf_config, make_hf_model, padded_batch

from xstilts.models import heads
from xstilts.models.convert import (
    load_hf_checkpoint,
    save_hf_checkpoint,
    scan_layer_params,
    task_params,
)
from xstilts.models.xlmr import XLMRConfig, XLMRModel, count_params

torch = pytest.importorskip("torch")
TOL = 1e-5


def _torch_inputs(ids, mask) -> dict:
    return {"input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long)}


def _max_diff(ours, theirs) -> float:
    return float(np.abs(np.asarray(ours, np.float32) - theirs.detach().numpy()).max())


@pytest.fixture(scope="module")
def batch():
    return padded_batch()


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "bin"])
def test_encoder_hidden_states_match(tmp_path, batch, safe_serialization):
    ids, mask = batch
    hf = make_hf_model("XLMRobertaModel", seed=1)
    hf.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    weights = "model.safetensors" if safe_serialization else "pytorch_model.bin"
    assert (tmp_path / weights).exists()
    config, params, report = load_hf_checkpoint(tmp_path, return_report=True)
    assert report.source.endswith(weights) and not report.missing and not report.unexpected
    assert config.hidden_size == 64 and config.vocab_size == 1002
    last, hidden = XLMRModel(config).apply({"params": params}, ids, mask,
                                           output_hidden_states=True)
    with torch.no_grad():
        ref = hf(**_torch_inputs(ids, mask), output_hidden_states=True)
    assert len(hidden) == len(ref.hidden_states) == 3
    for ours, theirs in zip(hidden, ref.hidden_states, strict=True):
        assert _max_diff(ours, theirs) < TOL
    assert _max_diff(last, ref.last_hidden_state) < TOL
    pooled = XLMRModel(config).apply({"params": params}, last, method=XLMRModel.pool)
    assert _max_diff(pooled, ref.pooler_output) < TOL


HEAD_CASES = {
    "XLMRobertaForMaskedLM": (lambda c: heads.XLMRForMaskedLM(c), {}),
    "XLMRobertaForSequenceClassification": (
        lambda c: heads.XLMRForSequenceClassification(c, 3, use_pooler=False), {"num_labels": 3}),
    "XLMRobertaForTokenClassification": (
        lambda c: heads.XLMRForTokenClassification(c, 5), {"num_labels": 5}),
    "XLMRobertaForQuestionAnswering": (lambda c: heads.XLMRForQuestionAnswering(c), {}),
    "XLMRobertaForMultipleChoice": (lambda c: heads.XLMRForMultipleChoice(c), {}),
}


def _run_ours(model, params, ids, mask):
    return model.apply({"params": params}, ids, mask)


def _run_hf(hf, cls_name, ids, mask):
    with torch.no_grad():
        out = hf(**_torch_inputs(ids, mask))
    if cls_name.endswith("QuestionAnswering"):
        return out.start_logits, out.end_logits
    return out.logits


def _inputs_for(cls_name, ids, mask):
    if cls_name.endswith("MultipleChoice"):  # [B, C, L]: two questions, three choices each
        return ids[None].repeat(2, 0)[:, :3], mask[None].repeat(2, 0)[:, :3]
    return ids, mask


@pytest.mark.parametrize("cls_name", sorted(HEAD_CASES))
def test_heads_match_transformers_and_export_round_trips(tmp_path, batch, cls_name):
    build, hf_kwargs = HEAD_CASES[cls_name]
    ids, mask = _inputs_for(cls_name, *batch)
    if cls_name.endswith("MultipleChoice"):
        ids = ids.copy()
        ids[1, :, 4] = 7  # make the two questions differ
    hf = make_hf_model(cls_name, seed=2, **hf_kwargs)
    hf.save_pretrained(tmp_path / "hf")
    config, loaded, report = load_hf_checkpoint(tmp_path / "hf", return_report=True)
    assert not report.unexpected, report.unexpected
    model = build(config)
    fresh = model.init(jax.random.key(0), ids, mask)["params"]
    params = task_params(loaded, jax.tree.map(np.asarray, jax.device_get(
        __import__("flax").linen.unbox(fresh))))
    ours = _run_ours(model, params, ids, mask)
    theirs = _run_hf(hf, cls_name, ids, mask)
    for o, t in zip(jax.tree.leaves(ours), theirs if isinstance(theirs, tuple) else [theirs],
                    strict=True):
        assert o.shape == tuple(t.shape)
        assert _max_diff(o, t) < TOL, cls_name

    # The way back: our export loads in transformers and gives the same logits.
    transformers = pytest.importorskip("transformers")
    save_hf_checkpoint(config, params, tmp_path / "export")
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["architectures"] == [cls_name]
    back = getattr(transformers, cls_name).from_pretrained(tmp_path / "export").eval()
    again = _run_hf(back, cls_name, ids, mask)
    for o, t in zip(jax.tree.leaves(ours), again if isinstance(again, tuple) else [again],
                    strict=True):
        assert _max_diff(o, t) < TOL, cls_name


def test_jiant_classifier_uses_pooler(tmp_path, batch):
    """use_pooler=True is pooler (dense+tanh on <s>) then the RoBERTa head, as jiant does."""
    ids, mask = batch
    config = XLMRConfig.tiny()
    model = heads.XLMRForSequenceClassification(config, 3, use_pooler=True)
    params = jax.device_get(model.init(jax.random.key(1), ids, mask)["params"])
    params = __import__("flax").linen.unbox(params)
    logits = model.apply({"params": params}, ids, mask)
    enc = XLMRModel(config)
    last = enc.apply({"params": params["roberta"]}, ids, mask)
    pooled = np.tanh(np.asarray(last)[:, 0] @ params["roberta"]["pooler"]["dense"]["kernel"]
                     + params["roberta"]["pooler"]["dense"]["bias"])
    c = params["classifier"]
    x = np.tanh(pooled @ c["dense"]["kernel"] + c["dense"]["bias"])
    expected = x @ c["out_proj"]["kernel"] + c["out_proj"]["bias"]
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_sentence_embedding_is_masked_mean_of_layer(tmp_path, batch):
    ids, mask = batch
    hf = make_hf_model("XLMRobertaModel", seed=3)
    hf.save_pretrained(tmp_path)
    config, params = load_hf_checkpoint(tmp_path)
    with torch.no_grad():
        ref = hf(**_torch_inputs(ids, mask), output_hidden_states=True).hidden_states[1].numpy()
    expected = (ref * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    emb = heads.XLMRSentenceEmbedder(config, layer=1).apply(
        {"params": {"roberta": params}}, ids, mask)
    np.testing.assert_allclose(emb, expected, atol=TOL)


def test_scan_and_remat_equal_the_plain_stack(tmp_path, batch):
    ids, mask = batch
    make_hf_model("XLMRobertaModel", seed=4).save_pretrained(tmp_path)
    config, params = load_hf_checkpoint(tmp_path)
    plain = XLMRModel(config).apply({"params": params}, ids, mask)
    for overrides in ({"scan_layers": True}, {"remat": "full"},
                      {"scan_layers": True, "remat": "dots"}):
        cfg = config.replace(**overrides)
        p = scan_layer_params(params, cfg.num_hidden_layers) if cfg.scan_layers else params
        out, hidden = XLMRModel(cfg).apply({"params": p}, ids, mask, output_hidden_states=True)
        np.testing.assert_allclose(out, plain, atol=1e-6, err_msg=str(overrides))
        assert len(hidden) == cfg.num_hidden_layers + 1
        # gradients flow through remat/scan the same way
        grad = jax.grad(lambda q, c=cfg: XLMRModel(c).apply({"params": q}, ids, mask).sum())(p)
        assert np.isfinite(np.asarray(jax.tree.leaves(grad)[0])).all()


def test_dropout_is_active_only_when_not_deterministic(batch):
    ids, mask = batch
    config = XLMRConfig.tiny()
    model = XLMRModel(config)
    params = model.init_params(jax.random.key(0))
    a = model.apply({"params": params}, ids, mask, deterministic=False,
                    rngs={"dropout": jax.random.key(1)})
    b = model.apply({"params": params}, ids, mask, deterministic=False,
                    rngs={"dropout": jax.random.key(2)})
    c = model.apply({"params": params}, ids, mask)
    assert float(jnp.abs(a - b).max()) > 1e-3
    assert float(jnp.abs(c - model.apply({"params": params}, ids, mask)).max()) == 0.0


def test_bf16_compute_stays_close_to_fp32_on_base_size():
    """Base width/depth (12 x 768, vocab cut to 1k): bf16 compute vs fp32, same fp32 params."""
    config = XLMRConfig.base(vocab_size=1002)
    ids, mask = padded_batch(lengths=(24, 17), max_len=24)
    params = XLMRModel(config).init_params(jax.random.key(0))
    fp32 = XLMRModel(config).apply({"params": params}, ids, mask)
    bf16 = XLMRModel(config.replace(dtype="bfloat16")).apply({"params": params}, ids, mask)
    assert bf16.dtype == jnp.bfloat16
    diff = np.abs(np.asarray(bf16, np.float32) - np.asarray(fp32))
    # Post-LayerNorm outputs are O(1); bf16 has an 8-bit mantissa (rel. step 2^-8 = 0.0039).
    assert diff.mean() < 0.02 and diff.max() < 0.25, (diff.mean(), diff.max())
    cos = (np.asarray(bf16, np.float32) * np.asarray(fp32)).sum(-1) / (
        np.linalg.norm(np.asarray(bf16, np.float32), axis=-1) * np.linalg.norm(fp32, axis=-1))
    assert cos.min() > 0.999


def test_presets_equal_hugging_face_configs():
    from transformers import XLMRobertaConfig

    base_hf = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                   num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                   type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                   eos_token_id=2, hidden_act="gelu")
    large_hf = {**base_hf, "hidden_size": 1024, "num_hidden_layers": 24,
                "num_attention_heads": 16, "intermediate_size": 4096}
    for ours, ref in ((XLMRConfig.base(), base_hf), (XLMRConfig.large(), large_hf)):
        assert XLMRConfig.from_hf_dict(XLMRobertaConfig(**ref).to_dict()) == ours
    large = XLMRConfig.large()
    shapes = jax.eval_shape(lambda: XLMRModel(large).init_params(jax.random.key(0)))
    assert count_params(shapes) == 559_890_432  # encoder + pooler (HF XLMRobertaModel)
    assert large.mask_token_id == 250001 and large.max_length == 512


def test_logical_axes_on_every_parameter():
    import flax.linen as nn

    config = XLMRConfig.tiny()
    ids = jnp.zeros((1, 4), jnp.int32)
    boxed = jax.eval_shape(heads.XLMRForMaskedLM(config).init, jax.random.key(0), ids, ids)
    specs = nn.get_partition_spec(boxed)["params"]
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert all(isinstance(s, jax.sharding.PartitionSpec) and len(s) >= 1 for s in leaves)
    enc = specs["roberta"]
    layer = enc["encoder"]["layer_0"]
    assert tuple(enc["embeddings"]["word_embeddings"]["embedding"]) == ("vocab", "embed")
    assert tuple(layer["attention"]["self"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(layer["attention"]["output"]["dense"]["kernel"]) == ("heads", "kv", "embed")
    assert tuple(layer["intermediate"]["dense"]["kernel"]) == ("embed", "mlp")
    assert tuple(layer["output"]["dense"]["kernel"]) == ("mlp", "embed")
    assert tuple(specs["lm_head"]["bias"]) == ("vocab",)
    scanned = jax.eval_shape(XLMRModel(config.replace(scan_layers=True)).init,
                             jax.random.key(0), ids, ids)
    spec = nn.get_partition_spec(scanned)["params"]["encoder"]["layers"]["layer"]
    assert tuple(spec["attention"]["self"]["query"]["kernel"]) == ("layers", "embed", "heads", "kv")


# --- bad input --------------------------------------------------------------------------------


def test_folder_without_weights(tmp_path):
    hf_config().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no model weights.*model\.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        load_hf_checkpoint(tmp_path)


def test_bert_config_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(
        tmp_path)
    with pytest.raises(ValueError, match=r"config\.json: model_type 'bert' is not XLM-R"):
        load_hf_checkpoint(tmp_path)


def test_weight_of_wrong_shape_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_hf_model("XLMRobertaModel").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    key = "encoder.layer.1.intermediate.dense.weight"
    tensors[key] = tensors[key][:100]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight has shape \(100, 64\)"):
        load_hf_checkpoint(tmp_path)


def test_missing_encoder_weight_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_hf_model("XLMRobertaModel").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["encoder.layer.0.attention.self.key.bias"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing.*encoder\.layer\.0\.attention\.self\.key\.bias"):
        load_hf_checkpoint(tmp_path)


def test_not_a_checkpoint_path():
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_hf_checkpoint("/nonexistent/dir/for/xstilts")


def test_input_longer_than_the_positions_is_an_error():
    """Tiny model: 258 positions - 2 (padding offset) = 256 tokens; 300 used to give all-NaN."""
    config = XLMRConfig.tiny()
    model = XLMRModel(config)
    params = model.init_params(jax.random.key(0))
    ids, mask = padded_batch(lengths=(256, 40), max_len=256)
    assert np.isfinite(np.asarray(model.apply({"params": params}, ids, mask))).all()
    long_ids, long_mask = padded_batch(lengths=(300, 40), max_len=300)
    message = (r"input length 300 exceeds the model's 256 positions \(max_position_embeddings "
               r"258 minus the padding offset 2\): truncate inputs to at most 256 tokens")
    with pytest.raises(ValueError, match=message):
        model.apply({"params": params}, long_ids, long_mask)
    with pytest.raises(ValueError, match=message):  # at trace time: nothing is compiled
        jax.jit(model.apply).lower({"params": params}, long_ids, long_mask)
    with pytest.raises(ValueError, match=message):  # every head goes through the encoder
        heads.XLMRForMultipleChoice(config).init(jax.random.key(0), long_ids[None],
                                                 long_mask[None])


# --- MLM logits at masked positions only; dropout RNG -----------------------------------------


def _mlm_batch(length: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    ids, mask = padded_batch(lengths=(32, 20, 9, 30), max_len=length, seed=seed)
    rng = np.random.default_rng(seed)
    label_mask = ((rng.random(ids.shape) < 0.15) & (mask == 1)).astype(np.int32)
    label_mask[:, 0], label_mask[:, 1] = 0, 1  # <s> is never a target
    label_mask[3, 2:14] = 1  # 13 masked tokens in row 3: more than max_predictions (8)
    return {"input_ids": np.where(label_mask == 1, 1001, ids).astype(np.int32),
            "attention_mask": mask, "labels": ids, "label_mask": label_mask,
            "example_mask": np.array([1, 1, 1, 0], np.int32)}


def test_mlm_logits_at_masked_positions_give_the_full_logits_loss():
    from xstilts import trainer

    config = XLMRConfig.tiny()
    model = heads.XLMRForMaskedLM(config)
    batch = {k: jnp.asarray(v) for k, v in _mlm_batch().items()}
    params = __import__("flax").linen.unbox(
        model.init(jax.random.key(0), batch["input_ids"], batch["attention_mask"])["params"])
    loss = trainer.MaskedLMLoss(max_predictions=8)

    def full(p):
        logits = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"])
        out = trainer.token_loss(logits, batch)
        return out.loss_sum, out

    def masked(p):
        b = loss.prepare(batch)
        logits = model.apply({"params": p}, b["input_ids"], b["attention_mask"],
                             masked_positions=b["masked_positions"])
        assert logits.shape == (4, 8, config.vocab_size) and logits.dtype == jnp.float32
        out = loss(logits, b)
        return out.loss_sum, out

    # Rows 0-2 hold at most 8 masked tokens: with row 3 a padding example, identical.
    (_, ref), ref_grads = jax.jit(jax.value_and_grad(full, has_aux=True))(params)
    (_, ours), grads = jax.jit(jax.value_and_grad(masked, has_aux=True))(params)
    assert int(ref.weight) == int(batch["label_mask"][:3].sum()) > 8
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # leaves reach |5|: fp32 sums

    # The positions are each row's first masked ones, in order, weight 0 past the last.
    prepared = loss.prepare(batch)
    row0 = np.flatnonzero(np.asarray(batch["label_mask"][0]))
    assert prepared["masked_positions"][0, :len(row0)].tolist() == row0.tolist()
    assert prepared["masked_weights"][0].tolist() == [1] * len(row0) + [0] * (8 - len(row0))
    # A row with more masked tokens than max_predictions keeps its first 8 (BERT's cap).
    assert prepared["masked_positions"][3].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert int(prepared["masked_weights"][3].sum()) == 8


def test_mlm_max_predictions_and_flops():
    from xstilts import trainer

    assert [trainer.mlm_max_predictions(n) for n in (16, 32, 128, 256, 512)] == \
        [16, 16, 40, 72, 120]
    assert trainer.task_loss("mlm").predictions(128) == 40
    config = XLMRConfig.tiny()
    base = trainer.train_flops_per_example(config, 128)
    assert trainer.train_flops_per_example(config, 128, mlm=True, mlm_predictions=40) == \
        base + 6 * 64 * 1002 * 40
    with pytest.raises(ValueError, match=r"max_predictions 200: expected 1\.\.128"):
        trainer.MaskedLMLoss(200).prepare({"label_mask": jnp.zeros((2, 128), jnp.int32),
                                           "labels": jnp.zeros((2, 128), jnp.int32)})


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_dropout_rng_setting(impl):
    """``dropout_rng``: the step key (threefry bits) seeds an RBG key; dropout draws from it."""
    from xstilts import partitioning, trainer

    ids, mask = padded_batch()
    config = XLMRConfig.tiny(dropout_rng=impl)
    tx, sched = trainer.make_optimizer(total_steps=10)
    part = partitioning.Partitioner(partitioning.create_mesh(data=-1))
    tr = trainer.Trainer(heads.XLMRForSequenceClassification(config, 3), trainer.task_loss(
        "classification"), tx, sched, part)
    state_key = jax.random.PRNGKey(5)  # the train state's uint32[2] threefry key
    key = tr._dropout_key(state_key)
    assert str(jax.random.key_impl(key)) == impl
    model = XLMRModel(config)
    params = model.init_params(jax.random.key(0))

    def run(k):
        return model.apply({"params": params}, ids, mask, deterministic=False,
                           rngs={"dropout": k})

    a, b = run(key), run(tr._dropout_key(state_key))
    np.testing.assert_array_equal(a, b)  # same step key, same masks
    assert float(jnp.abs(a - run(tr._dropout_key(jax.random.PRNGKey(6)))).max()) > 1e-3
    assert float(jnp.abs(a - run(state_key)).max()) > 1e-3  # not threefry's masks
    with pytest.raises(ValueError, match=r"dropout_rng 'philox': expected one of"):
        XLMRConfig.tiny(dropout_rng="philox")
