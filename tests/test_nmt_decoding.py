"""Greedy and beam-search decoding against Hugging Face ``generate()`` token for token."""

from __future__ import annotations

import numpy as np
import pytest

from tests.nmt_reference import make_hf_nmt, source_batch
from xstilts.decoding import DecodeSettings, generate
from xstilts.models.nmt_convert import load_nmt_checkpoint

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``(family, eos_boost) -> (HF model, our config, our params)``, built on first use."""
    cache = {}

    def get(family: str, eos_boost: float):
        if (family, eos_boost) not in cache:
            folder = tmp_path_factory.mktemp(family)
            hf = make_hf_nmt(family, seed=11, eos_boost=eos_boost)
            hf.save_pretrained(folder)
            cache[family, eos_boost] = (hf, *load_nmt_checkpoint(folder))
        return cache[family, eos_boost]
    return get


def _hf_generate(hf, ids, mask, settings: DecodeSettings, forced_bos) -> np.ndarray:
    kwargs = dict(num_beams=settings.num_beams, max_length=settings.max_length,
                  do_sample=False, length_penalty=settings.length_penalty,
                  early_stopping=settings.early_stopping)
    if forced_bos is not None:
        kwargs["forced_bos_token_id"] = forced_bos
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                          attention_mask=torch.tensor(mask, dtype=torch.long), **kwargs)
    return out.numpy()


def _assert_same(ours: np.ndarray, theirs: np.ndarray, pad: int) -> None:
    width = theirs.shape[1]
    np.testing.assert_array_equal(ours[:, :width], theirs)
    assert (ours[:, width:] == pad).all(), "ours goes on past Hugging Face's last column"


# (family, eos boost, settings): the boosts make some rows of the batch end with </s> and others
# run to max_length (the test checks that both happen).
CASES = [
    ("m2m100", 0.33, DecodeSettings(num_beams=1, max_length=12)),
    ("nllb", 0.4, DecodeSettings(num_beams=1, max_length=12)),
    ("nllb", 0.2, DecodeSettings(num_beams=4, max_length=12)),
    ("nllb", 0.2, DecodeSettings(num_beams=4, max_length=10, early_stopping=True,
                                 length_penalty=0.6)),
    ("m2m100", 0.2, DecodeSettings(num_beams=4, max_length=10, early_stopping="never",
                                   length_penalty=1.3)),
]


@pytest.mark.parametrize("family,eos_boost,settings", CASES, ids=[
    f"{f}-beams{s.num_beams}-lp{s.length_penalty}-es{s.early_stopping}" for f, _, s in CASES])
def test_generate_equals_hugging_face(checkpoints, family, eos_boost, settings):
    hf, config, params = checkpoints(family, eos_boost)
    lang = config.vocab_size - 4  # a language-code-like id
    ids, mask = source_batch(config.vocab_size, lengths=(9, 5, 2, 7, 3), seed=7,
                             lang_id=config.vocab_size - 2)
    theirs = _hf_generate(hf, ids, mask, settings, lang)
    ours, scores = generate(config, params, ids, mask, lang, settings)
    assert ours.shape == (len(ids), settings.max_length)
    assert (ours[:, 1] == lang).all() and (ours[:, 0] == config.decoder_start_token_id).all()
    _assert_same(ours, theirs, config.pad_token_id)
    assert np.isfinite(scores).all()
    # the batch shows both ways of ending: </s> before max_length, and max_length
    ended = (theirs == config.eos_token_id)[:, 1:].any(axis=1)
    assert ended.any() and not ended.all(), f"rows ending with </s>: {ended}; expected a mix"


def test_without_forced_bos_and_per_row_targets(checkpoints):
    hf, config, params = checkpoints("nllb", 0.2)
    ids, mask = source_batch(config.vocab_size, lengths=(6, 4, 8), seed=3)
    settings = DecodeSettings(num_beams=4, max_length=9)
    ours, _ = generate(config, params, ids, mask, None, settings)
    _assert_same(ours, _hf_generate(hf, ids, mask, settings, None), config.pad_token_id)
    targets = np.array([config.vocab_size - 3, config.vocab_size - 5, config.vocab_size - 3])
    mixed, _ = generate(config, params, ids, mask, targets, settings)
    for row, lang in enumerate(targets):  # each row as HF decodes it alone
        theirs = _hf_generate(hf, ids[row:row + 1], mask[row:row + 1], settings, int(lang))
        _assert_same(mixed[row:row + 1], theirs, config.pad_token_id)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="num_beams 0"):
        DecodeSettings(num_beams=0)
    with pytest.raises(ValueError, match="early_stopping 'sometimes'"):
        DecodeSettings(early_stopping="sometimes")


def test_rows_sharded_over_the_data_axis_decode_the_same(checkpoints):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if jax.device_count() < 2:
        pytest.skip("needs several devices (XLA_FLAGS host device count, set by conftest)")
    _, config, params = checkpoints("nllb", 0.2)
    n = jax.device_count()
    ids, mask = source_batch(config.vocab_size, lengths=tuple(2 + i % 7 for i in range(n)),
                             seed=9)
    settings = DecodeSettings(num_beams=4, max_length=8)
    plain, _ = generate(config, params, ids, mask, config.vocab_size - 4, settings)
    rows = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    sharded, _ = generate(config, params, jax.device_put(ids, rows), jax.device_put(mask, rows),
                          config.vocab_size - 4, settings)
    np.testing.assert_array_equal(sharded, plain)


def test_grouped_top_k_is_lax_top_k_with_ties_and_infinities():
    """Beam search's top-k (maxima of column groups, then the best groups' members) returns
    exactly ``jax.lax.top_k``'s values and indices, ties to the lower index included."""
    import jax
    import jax.numpy as jnp

    from xstilts.decoding import top_k

    # A late group holding the maximum and a value tied with earlier groups' (index 61 must
    # lose to indices 3 and 12), and random rows with many ties and -inf.
    late = np.zeros((1, 64), np.float32)
    late[0, [60, 61, 3, 12, 50]] = [5, 1, 1, 1, 1]
    for group in (8, 16):
        values, index = top_k(jnp.asarray(late), 3, group)
        np.testing.assert_array_equal(np.asarray(index), [[60, 3, 12]])
        np.testing.assert_array_equal(np.asarray(values), [[5, 1, 1]])
    rng = np.random.default_rng(0)
    for trial in range(24):
        rows, cols = int(rng.integers(1, 17)), int(rng.integers(40, 3000))
        k = int(rng.integers(1, 9))
        x = rng.integers(-4, 4, (rows, cols)).astype(np.float32)  # many ties
        if trial % 3 == 0:
            x[:, rng.integers(0, cols, cols // 2)] = -np.inf
        if trial % 4 == 0:
            x = rng.standard_normal((rows, cols)).astype(np.float32)
        for group in (3, 8, 128):  # with and without padding; 128 x k > C falls back
            ours = top_k(jnp.asarray(x), k, group)
            ref = jax.lax.top_k(jnp.asarray(x), k)
            np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(ref[0]))
            np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(ref[1]))
