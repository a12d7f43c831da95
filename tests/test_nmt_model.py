"""The Flax M2M100/NLLB model against Hugging Face PyTorch on tiny random checkpoints."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tests.nmt_reference import FAMILIES, make_hf_nmt, source_batch
from xstilts.models.nmt import NMTModel, init_cache, init_step_cache
from xstilts.models.nmt_convert import load_nmt_checkpoint

torch = pytest.importorskip("torch")


def _decoder_ids(vocab_size: int, batch: int, length: int = 6) -> np.ndarray:
    rng = np.random.default_rng(1)
    ids = rng.integers(3, vocab_size, (batch, length)).astype(np.int32)
    ids[:, 0] = 2  # decoder_start_token_id
    return ids


def _hf_logits(model, ids, mask, dec) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    decoder_input_ids=torch.tensor(dec, dtype=torch.long))
    return out.logits.numpy()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_logits_equal_hugging_face(tmp_path, family, weights):
    hf = make_hf_nmt(family, embed_std=0.4)
    hf.save_pretrained(tmp_path, safe_serialization=weights == "safetensors")
    assert (tmp_path / ("model.safetensors" if weights == "safetensors"
                        else "pytorch_model.bin")).exists()
    config, params = load_nmt_checkpoint(tmp_path)
    assert config.vocab_size == FAMILIES[family]["vocab_size"]
    ids, mask = source_batch(config.vocab_size, lang_id=config.vocab_size - 3)
    dec = _decoder_ids(config.vocab_size, len(ids))
    want = _hf_logits(hf, ids, mask, dec)
    got = np.asarray(NMTModel(config).apply({"params": params}, ids, mask, dec))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.abs(want).max() > 1.0  # the comparison is not of near-zero numbers


def test_cached_steps_equal_full_forward(tmp_path):
    hf = make_hf_nmt("nllb", seed=3, embed_std=0.4)
    hf.save_pretrained(tmp_path)
    config, params = load_nmt_checkpoint(tmp_path)
    model = NMTModel(config)
    ids, mask = source_batch(config.vocab_size, seed=2)
    dec = _decoder_ids(config.vocab_size, len(ids))
    full = np.asarray(model.apply({"params": params}, ids, mask, dec))
    enc = model.apply({"params": params}, ids, mask, method=NMTModel.encode)
    cross = model.apply({"params": params}, enc, method=NMTModel.cross_kv)
    cache = init_cache(config, len(ids), 8)
    steps = []
    for t in range(dec.shape[1]):
        logits, cache = model.apply({"params": params}, dec[:, t:t + 1], cross, mask, cache, t,
                                    method=NMTModel.decode)
        steps.append(np.asarray(logits[:, 0]))
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5, rtol=0)


def test_shared_cache_steps_follow_their_ancestors(tmp_path):
    """``decode_step`` with two hypotheses per row sharing one cache: hypothesis 1 is fed other
    tokens for positions 0-2 but attends to hypothesis 0's slots there (its ancestor, as after a
    beam reorder), so from position 3 on its logits are those of hypothesis 0's prefix followed
    by its own tokens; attending to its own slots would see the other tokens."""
    hf = make_hf_nmt("m2m100", seed=4, embed_std=0.4)
    hf.save_pretrained(tmp_path)
    config, params = load_nmt_checkpoint(tmp_path)
    model, variables = NMTModel(config), {"params": params}
    ids, mask = source_batch(config.vocab_size, seed=5)
    first = _decoder_ids(config.vocab_size, len(ids))
    rng = np.random.default_rng(6)
    second = np.where(np.arange(first.shape[1]) < 3, first,
                      rng.integers(3, config.vocab_size, first.shape)).astype(np.int32)
    fed = np.where(np.arange(first.shape[1]) < 3,
                   rng.integers(3, config.vocab_size, first.shape), second).astype(np.int32)
    enc = model.apply(variables, ids, mask, method=NMTModel.encode)
    cross = model.apply(variables, enc, method=NMTModel.step_cross_kv)
    length = first.shape[1]
    cache = init_step_cache(config, len(ids), 2 * length)
    ancestors = np.array([[0] * length, [0, 0, 0] + [1] * (length - 3)])  # [hypothesis, t]
    steps = []
    for t in range(length):
        slot_of = np.arange(length)[:, None] * 2 + np.arange(2)  # [t, hypothesis]
        visible = np.zeros((2, 2 * length), bool)
        for j in range(2):
            visible[j, slot_of[np.arange(t + 1), ancestors[j, :t + 1]]] = True
        tokens = np.stack([first[:, t], fed[:, t]], axis=1)
        logits, cache = model.apply(variables, tokens, cross, mask, cache, t,
                                    np.broadcast_to(visible, (len(ids), *visible.shape)),
                                    method=NMTModel.decode_step)
        steps.append(np.asarray(logits))
    steps = np.stack(steps, 2)  # [B, hypothesis, t, V]
    for j, seq, start in ((0, first, 0), (1, second, 3)):
        full = np.asarray(model.apply(variables, ids, mask, seq))
        np.testing.assert_allclose(steps[:, j, start:], full[:, start:], atol=1e-5, rtol=0)
    assert not np.allclose(steps[:, 1, 3:], np.asarray(
        model.apply(variables, ids, mask, fed))[:, 3:], atol=1e-3), "the other tokens do matter"


def test_untied_lm_head_and_unscaled_embeddings(tmp_path):
    hf = make_hf_nmt("m2m100", seed=5, embed_std=0.4, tie_word_embeddings=False,
                     scale_embedding=False)
    with torch.no_grad():
        hf.lm_head.weight.normal_()
    hf.save_pretrained(tmp_path)
    config, params = load_nmt_checkpoint(tmp_path)
    assert not config.tie_word_embeddings and config.embed_scale == 1.0
    ids, mask = source_batch(config.vocab_size, seed=4)
    dec = _decoder_ids(config.vocab_size, len(ids))
    got = np.asarray(NMTModel(config).apply({"params": params}, ids, mask, dec))
    np.testing.assert_allclose(got, _hf_logits(hf, ids, mask, dec), atol=1e-5, rtol=0)


def test_bad_checkpoints_name_file_and_key(tmp_path):
    hf = make_hf_nmt("m2m100")
    hf.save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "decoder_layers": 3}))
    with pytest.raises(ValueError, match=r"model\.decoder\.layers\.2\..*missing|missing.*"
                                         r"model\.decoder\.layers\.2"):
        load_nmt_checkpoint(tmp_path)
    cfg_path.write_text(json.dumps({**cfg, "d_model": 48, "encoder_attention_heads": 4}))
    with pytest.raises(ValueError, match=r"model\.safetensors: weight .* has shape"):
        load_nmt_checkpoint(tmp_path)
    cfg_path.write_text(json.dumps({**cfg, "model_type": "bart"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type 'bart'"):
        load_nmt_checkpoint(tmp_path)


def test_parameters_carry_logical_axes():
    from xstilts.models.nmt import NMTConfig

    config = NMTConfig(**FAMILIES["m2m100"])
    ids = jax.numpy.ones((1, 3), jax.numpy.int32)
    params = jax.eval_shape(lambda: NMTModel(config).init(jax.random.key(0), ids, ids, ids))[
        "params"]
    boxed = jax.tree.leaves(params, is_leaf=lambda x: hasattr(x, "names"))
    assert all(hasattr(b, "names") for b in boxed)  # every parameter has logical axes
    assert tuple(params["shared"]["embedding"].names) == ("vocab", "embed")
    q = params["decoder"]["layers_0"]["encoder_attn"]["q_proj"]["kernel"]
    assert tuple(q.names) == ("embed", "heads", "kv")
    assert tuple(params["encoder"]["layers_1"]["ffn"]["fc2"]["kernel"].names) == ("mlp", "embed")
