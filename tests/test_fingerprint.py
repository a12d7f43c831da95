"""xstilts.fingerprint: flat settings, their digest and the setting-by-setting difference."""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import gin

from xstilts import fingerprint as fp


@dataclasses.dataclass(frozen=True)
class _Config:
    size: int = 4
    rate: float = 0.5


def _factory(*, batch_size: int, length: int = 16, seed: int = 0) -> None:
    del batch_size, length, seed


def test_flatten_digest_and_diff_are_by_setting():
    old = {"batch_size": 8, "model": _Config(), "lengths": (128, 256)}
    new = {"batch_size": 16, "model": _Config(rate=0.25), "lengths": [128, 256], "extra": "x"}
    assert fp.flatten(old) == {"batch_size": 8, "model.size": 4, "model.rate": 0.5,
                               "lengths": [128, 256]}
    assert fp.digest(old) == fp.digest({"lengths": [128, 256], "model": _Config(),
                                        "batch_size": 8})  # order and tuple/list do not matter
    assert fp.digest(old) != fp.digest({**old, "batch_size": 9})
    diffs = fp.settings_diff(old, new)
    assert diffs == [("batch_size", 8, 16), ("extra", fp.MISSING, "x"), ("model.rate", 0.5, 0.25)]
    assert fp.format_diff(diffs).splitlines() == [
        "  batch_size: 8 -> 16", '  extra: <not set> -> "x"', "  model.rate: 0.5 -> 0.25"]
    assert fp.settings_diff(old, new, ignore=["batch_size", "model"]) == [
        ("extra", fp.MISSING, "x")]


def test_callable_settings_read_partials_gin_bindings_and_defaults():
    partial = functools.partial(_factory, length=32)
    assert fp.callable_settings(partial, skip=["batch_size"]) == {
        "name": f"{__name__}._factory", "length": 32, "seed": 0}
    gin.clear_config()
    try:
        configurable = gin.external_configurable(_factory, "fp_factory")
        gin.parse_config("fp_factory.seed = 7")
        assert fp.callable_settings(configurable)["seed"] == 7
    finally:
        gin.clear_config()
    assert fp.callable_settings(_Config(size=2)) == {
        "name": f"{__name__}._Config", "size": 2, "rate": 0.5}
    assert fp.sampled(lambda s: s / 10, [0, 5]) == {"0": 0.0, "5": 0.5}


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc" * 1000)
    assert fp.file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
