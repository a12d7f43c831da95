"""Ahead-of-time compile of the partitioned train step with abstract (eval_shape) parameters.

XLM-R Large at 32 x 256 on fsdp=8 takes minutes to compile on the 2-core CI machine, so pytest
compiles the tiny model through the same code path; `python -m xstilts.aot --model large ...`
is run by hand (its figure is in the issue note). The tiny model also compiles for a TPU v5e
2x2 slice through libtpu, without a TPU.
"""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

from tests.conftest import require_libtpu
from xstilts import aot, partitioning, trainer
from xstilts.models.xlmr import XLMRConfig
from xstilts.train import build_model


def _shard_bytes(x: jax.ShapeDtypeStruct) -> int:
    shape = x.sharding.shard_shape(x.shape)
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def test_tiny_fsdp8_compiles_and_reports_per_device_memory(capsys):
    compiled, report = aot.compile_train_step(model="tiny", mesh_shape={"fsdp": 8}, batch=16,
                                              length=32)
    # Independent count of what one device holds as arguments: its shard of every state leaf
    # (params, AdamW mu/nu, counters, RNG) and of every batch array.
    state_shardings, _ = compiled.input_shardings[0]
    assert state_shardings.params["roberta"]["encoder"]["layer_0"]["intermediate"]["dense"][
        "kernel"].spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    mesh = state_shardings.params["roberta"]["embeddings"]["LayerNorm"]["scale"].mesh
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    tx, sched = trainer.make_optimizer(total_steps=1000)
    tr = trainer.Trainer(build_model("classification", XLMRConfig.tiny(), num_labels=3),
                         trainer.classification_loss, tx, sched, partitioning.Partitioner(mesh))
    abstract = tr.abstract_state((16, 32))
    state_bytes = sum(_shard_bytes(x) for x in jax.tree.leaves(abstract))
    step_shape = trainer.StepShape("classification", 3, 16, 32)
    batch_bytes = sum(int(np.prod(s)) * 4 // 8 for s in step_shape.shapes().values())
    assert report.argument_bytes == state_bytes + batch_bytes
    assert report.alias_bytes == state_bytes  # the state is donated
    assert report.temp_bytes > 0
    print("\n".join(report.lines()))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r"aot: tiny fsdp=8 batch 16x32: (\d+\.\d\d) GiB per device", last)
    assert m and float(m.group(1)) == pytest.approx(report.total_bytes / 2**30, abs=0.005)


def test_aot_compiles_the_step_shape_batch():
    """aot's batch is ``trainer.StepShape``'s: multiple choice at ``[B, C, L]``."""
    compiled, _ = aot.compile_train_step(model="tiny", mesh_shape={"fsdp": 8}, batch=8,
                                         length=16, task_type="multiple_choice", num_labels=2,
                                         num_choices=3)
    _, batch_shardings = compiled.input_shardings[0]
    shape = trainer.StepShape("multiple_choice", 2, 8, 16, num_choices=3)
    expected = shape.batch(partitioning.Partitioner(batch_shardings["input_ids"].mesh))
    assert {k: s.spec for k, s in batch_shardings.items()} == \
        {k: v.sharding.spec for k, v in expected.items()}
    (_, batch_args), _ = compiled.args_info
    assert {k: (a.shape, a.dtype) for k, a in batch_args.items()} == \
        {k: (v.shape, v.dtype) for k, v in expected.items()}
    assert batch_args["input_ids"].shape == (8, 3, 16)


def test_aot_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"global batch size 12 is not divisible by the 8 data"):
        aot.compile_train_step(model="tiny", mesh_shape={"fsdp": 8}, batch=12, length=16)
    with pytest.raises(ValueError, match=r"input length 600 exceeds the model's 256 positions"):
        aot.compile_train_step(model="tiny", mesh_shape={"fsdp": 8}, batch=8, length=600)
    with pytest.raises(ValueError, match=r"needs 6 devices but 8 are available"):
        aot.compile_train_step(model="tiny", mesh_shape={"fsdp": 6}, batch=12, length=16)


# Deviceless TPU compile (libtpu, the `tpu` extra; the test extra installs it so CI runs this) --
def test_tiny_train_step_compiles_for_tpu_v5e_2x2_with_splash_attention():
    require_libtpu("deviceless TPU compile")
    compiled, report = aot.compile_train_step(
        model="tiny", mesh_shape={"fsdp": 4}, batch=8, length=128, topology="v5e:2x2",
        config_overrides={"dtype": "bfloat16", "attention": "splash",
                          "attention_probs_dropout_prob": 0.0, "dropout_rng": "unsafe_rbg"})
    assert report.platform == "tpu v5e:2x2" and report.devices == 4
    assert report.attention == "splash"
    hlo = compiled.as_text()
    assert "tpu_custom_call" in hlo  # the Pallas splash kernels (forward and backward)
    state_shardings, _ = compiled.input_shardings[0]
    kernel = state_shardings.params["roberta"]["encoder"]["layer_0"]["intermediate"]["dense"][
        "kernel"]
    assert {d.device_kind for d in kernel.mesh.devices.flat} == {"TPU v5 lite"}
    # The TPU compiler's figures, per chip. cost_analysis() cannot see into the splash kernels:
    # their FLOPs (the model count of attention) are added; then the total is above the model's
    # (softmax, norms, optimizer). The state is donated; far below v5e's 16 GiB.
    r = report.roofline
    model_flops = trainer.train_flops_per_example(XLMRConfig.tiny(), 128) * 8 / 4
    assert r.model_flops == model_flops
    assert r.kernel_flops == 12 * 2 * 64 * 128**2 * 8 / 4
    assert r.hlo_flops < model_flops < r.flops < 10 * model_flops
    assert r.bytes_accessed > report.argument_bytes
    assert r.step_seconds == max(r.flops / 197e12, r.bytes_accessed / 819e9)
    assert 0 < r.mfu < 1 and report.fits and 0 < report.total_bytes < 2**30
    assert report.alias_bytes > 0 and report.temp_bytes > 0
    as_json = report.to_json()
    assert as_json["chip"] == "TPU v5e" and as_json["fits"] is True
    assert as_json["hlo_flops_per_chip"] == r.hlo_flops
    assert json.loads(json.dumps(as_json))["roofline_mfu"] == pytest.approx(r.mfu)
    lines = report.lines()
    assert lines[0] == "platform: tpu v5e:2x2 (4 devices), attention splash"
    assert any(re.fullmatch(r"fits in the 16 GiB of HBM per TPU v5e chip", x) for x in lines)
    assert re.fullmatch(r"aot: tiny fsdp=4 batch 8x128: \d+\.\d\d GiB per device", lines[-1])


def test_topology_names_are_checked():
    with pytest.raises(ValueError, match=r"topology 'v9x:2x2': unknown TPU generation 'v9x', "
                                         r"expected one of \['v4', 'v5e'"):
        aot.chip_spec("v9x:2x2")
    assert aot.chip_spec("v5p:2x2x1").hbm_gib == 95
    assert aot.main(["--topology", "v9x:2x2", "--model", "tiny"]) == 2


def test_mlm_step_for_tpu_computes_logits_only_at_the_masked_positions():
    """MLM B8xL128 on v5e:2x2: the TPU program's vocabulary logits are [rows per chip, 40, V]
    (40 = max_predictions(128)), never [rows, 128, V]."""
    require_libtpu("deviceless TPU compile")
    compiled, report = aot.compile_train_step(
        model="tiny", mesh_shape={"fsdp": 4}, batch=8, length=128, task_type="mlm",
        topology="v5e:2x2", config_overrides={"dtype": "bfloat16"})
    vocab = XLMRConfig.tiny().vocab_size
    hlo = compiled.as_text()
    assert trainer.mlm_max_predictions(128) == 40
    assert re.search(rf"\[2,40,{vocab}\]", hlo)  # 8 rows over 4 chips
    assert not re.search(rf"\[2,128,{vocab}\]", hlo)
    assert report.fits and report.roofline.hlo_flops > 0


def test_scanned_layers_for_tpu_report_memory_but_no_roofline():
    """With the layers under nn.scan, XLA's cost analysis counts the loop body once: the
    scanned step's HLO FLOPs fall below the unrolled step's, so the report keeps the memory
    and drops the roofline rather than print a wrong MFU."""
    require_libtpu("deviceless TPU compile")
    shape = dict(model="tiny", mesh_shape={"fsdp": 4}, batch=8, length=64, topology="v5e:2x2")
    overrides = {"dtype": "bfloat16", "num_hidden_layers": 4}
    _, plain = aot.compile_train_step(**shape, config_overrides=overrides)
    _, scanned = aot.compile_train_step(**shape, config_overrides={**overrides,
                                                                   "scan_layers": True})
    assert not plain.roofline.scanned_layers and scanned.roofline.scanned_layers
    assert scanned.roofline.hlo_flops < 0.6 * plain.roofline.hlo_flops
    assert scanned.roofline.model_flops == plain.roofline.model_flops
    assert scanned.fits and scanned.total_bytes > 0
    as_json = scanned.to_json()
    assert as_json["scanned_layers"] is True and as_json["roofline_mfu"] is None
    assert as_json["roofline_step_seconds"] is None and as_json["fits"] is True
    text = "\n".join(scanned.lines())
    assert "counts the loop body once" in text and "MFU" not in text
    assert "MFU <=" in "\n".join(plain.lines())
