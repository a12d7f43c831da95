"""AOT compile of the NMT beam search: for this host's 8 CPU devices and, with libtpu, for a
v5e:2x2 slice without a TPU (tiny shapes; the 600M figures come from the CLI)."""

from __future__ import annotations

import jax
import pytest

from tests.conftest import require_libtpu
from xstilts.decoding import DecodeSettings
from xstilts.translate_aot import compile_decode

TINY = dict(vocab_size=128, d_model=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_ffn_dim=64)


def test_compiles_for_host_devices_with_rows_split():
    n = jax.device_count()
    _, figures = compile_decode("m2m100_418M", batch=2 * n, source_length=16,
                                settings=DecodeSettings(num_beams=2, max_length=6),
                                dtype="float32", config_overrides=TINY)
    assert figures["devices"] == n and figures["platform"] == "cpu"
    attention, ffn, norm = 4 * (32 * 32 + 32), 32 * 64 + 64 + 64 * 32 + 32, 2 * 32
    encoder, decoder = attention + ffn + 2 * norm, 2 * attention + ffn + 3 * norm
    assert figures["params"] == 128 * 32 + encoder + decoder + 2 * norm
    assert figures["bytes_per_chip"] > figures["argument_bytes"] > 0


def test_bad_batch_is_an_error():
    with pytest.raises(ValueError, match="does not split over"):
        compile_decode("m2m100_418M", batch=jax.device_count() + 1, source_length=8,
                       settings=DecodeSettings(num_beams=2, max_length=4),
                       config_overrides=TINY)


def test_compiles_for_a_v5e_slice_without_a_tpu():
    require_libtpu("deviceless v5e compile")
    _, figures = compile_decode("nllb-200-distilled-600M", batch=4, source_length=16,
                                settings=DecodeSettings(num_beams=2, max_length=6),
                                topology="v5e:2x2", config_overrides=TINY)
    assert (figures["platform"], figures["devices"], figures["fits"]) == ("tpu", 4, True)
    assert figures["hlo_flops_per_chip"] > 0
