"""The automatic ``jax.distributed`` start: what is detected from which environment, what is
refused, and two real processes that form one distributed system with no coordinator
arguments (an ``srun``-style SLURM environment, which JAX's ``SlurmCluster`` detects)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys

import pytest
from jax._src import clusters

from xstilts import partitioning

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "KUBERNETES_SERVICE_HOST",
                "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID",
                "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "JAX_COORDINATOR_PORT", "XSTILTS_COORDINATOR", "XSTILTS_NUM_PROCESSES",
                "XSTILTS_PROCESS_ID", "XSTILTS_DISTRIBUTED", "XSTILTS_AUTO_DISTRIBUTED")


@pytest.fixture
def env(monkeypatch):
    """A plain single host: no cluster or coordinator variable (even if CI runs under SLURM)."""
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _slurm(env, ntasks: int, procid: int) -> None:
    for name, value in {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[003-006],login1",
                        "SLURM_NTASKS": str(ntasks), "SLURM_PROCID": str(procid),
                        "SLURM_LOCALID": "0"}.items():
        env.setenv(name, value)


def test_a_plain_host_detects_nothing_and_starts_nothing(env, caplog):
    assert partitioning.detect_cluster() is None
    assert partitioning.distributed_setup() is None
    with caplog.at_level(logging.INFO, "xstilts.partitioning"):
        assert partitioning.initialize_distributed() is False  # returns at once, no coordinator
    assert "not started (no multi-process environment detected)" in caplog.text


def test_slurm_and_open_mpi_are_detected(env):
    _slurm(env, 4, 2)
    assert partitioning.detect_cluster() == ("slurm", 4, 2)
    assert partitioning.distributed_setup() == partitioning.DistributedSetup("slurm", 4, 2)
    # Explicit values complete (and override) the detected cluster; the source says so.
    assert partitioning.distributed_setup(coordinator_address="10.0.0.1:1234") == \
        partitioning.DistributedSetup("arguments+slurm", 4, 2, "10.0.0.1:1234")
    for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST"):
        env.delenv(name)
    assert partitioning.detect_cluster() is None  # srun sets the step's node list; salloc not
    for name, value in {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911",
                        "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_RANK": "5",
                        "OMPI_COMM_WORLD_LOCAL_RANK": "1"}.items():
        env.setenv(name, value)
    assert partitioning.detect_cluster() == ("ompi", 8, 5)


def test_explicit_settings_from_arguments_and_environment(env):
    env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:8476")
    env.setenv("JAX_NUM_PROCESSES", "2")
    env.setenv("JAX_PROCESS_ID", "1")
    assert partitioning.distributed_setup() == \
        partitioning.DistributedSetup("environment", 2, 1, "10.0.0.2:8476")
    assert partitioning.distributed_setup(coordinator_address="h:1", num_processes=3,
                                          process_id=0) == \
        partitioning.DistributedSetup("arguments", 3, 0, "h:1")
    env.setenv("XSTILTS_PROCESS_ID", "0")  # the project's own names win over JAX's
    assert partitioning.distributed_setup().process_id == 0
    # One process is never a distributed start.
    assert partitioning.distributed_setup(num_processes=1).num_processes == 1
    assert partitioning.initialize_distributed(num_processes=1) is False


@pytest.mark.parametrize(("settings", "variables", "message"), [
    ({"num_processes": 2}, {}, r"missing coordinator address .*, process id"),
    ({}, {"JAX_COORDINATOR_ADDRESS": "h:1"},
     r"from environment are incomplete .* missing number of processes"),
    ({}, {"JAX_NUM_PROCESSES": "two"}, r"JAX_NUM_PROCESSES='two': expected an integer"),
    ({}, {"XSTILTS_DISTRIBUTED": "maybe"}, r"expected auto, 0 \(off\) or 1 \(force\)"),
])
def test_incomplete_or_bad_settings_are_clear_errors(env, settings, variables, message):
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        partitioning.initialize_distributed(**settings)


def test_a_started_backend_refuses_to_join_late_and_off_means_off(env, caplog):
    import jax

    jax.devices()  # this test process's backend is up (as after any JAX computation)
    _slurm(env, 1, 0)
    assert partitioning.initialize_distributed() is False  # srun -n1: one process
    _slurm(env, 2, 1)
    with pytest.raises(RuntimeError, match=r"slurm asks for 2 processes, but JAX's backend is "
                                           r"already running .* XSTILTS_DISTRIBUTED=0"):
        partitioning.initialize_distributed()
    env.setenv("XSTILTS_DISTRIBUTED", "0")
    with caplog.at_level(logging.INFO, "xstilts.partitioning"):
        assert partitioning.initialize_distributed() is False
    assert "not started (XSTILTS_DISTRIBUTED=0)" in caplog.text


def test_a_failing_probe_is_skipped_and_a_failing_count_is_an_error(env, monkeypatch):
    class Unreachable(clusters.ClusterEnv):  # registers itself in _cluster_types ...
        name = "unreachable"

        @classmethod
        def is_env_present(cls) -> bool:
            raise ConnectionError("metadata.google.internal does not answer")

    class Broken(clusters.ClusterEnv):
        name = "broken"

        @classmethod
        def is_env_present(cls) -> bool:
            return True

        @classmethod
        def get_process_count(cls) -> int:
            raise KeyError("worker-network-endpoints")

    kinds = [k for k in clusters.ClusterEnv._cluster_types if k not in (Unreachable, Broken)]
    clusters.ClusterEnv._cluster_types[:] = kinds  # ... so take them out again at once
    monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types", [Unreachable, *kinds])
    assert partitioning.detect_cluster() is None
    monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types", [Unreachable, Broken, *kinds])
    with pytest.raises(RuntimeError, match=r"detected a broken cluster but could not read its "
                                           r"process count/id .*XSTILTS_DISTRIBUTED=0"):
        partitioning.detect_cluster()


# Two real processes --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("via", ["slurm", "env"])
def test_two_processes_form_one_system_without_coordinator_arguments(tmp_path, via):
    """``slurm``: each worker sees only what ``srun`` would set (and ``JAX_COORDINATOR_PORT``) and
    calls ``initialize_distributed()`` with no arguments; ``env``: ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    env["JAX_PLATFORMS"] = "cpu"
    procs = []
    for pid in range(2):
        spec = {"devices": 2, "out": str(tmp_path / f"p{pid}.json"),
                "distributed": {"coordinator": f"127.0.0.1:{port}", "num_processes": 2,
                                "process_id": pid, "via": via}}
        procs.append(subprocess.Popen([sys.executable, WORKER, json.dumps(spec)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    logs = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            logs.append(err.decode())
            assert proc.returncode == 0, logs[-1][-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    out = [json.loads((tmp_path / f"p{pid}.json").read_text()) for pid in range(2)]
    for pid, o in enumerate(out):
        assert o["process_index"] == pid and o["distributed"] is True
        assert (o["process_count"], o["device_count"], o["local_device_count"]) == (2, 4, 2)
        assert o["allgather"] == [1, 11]  # each process's 10 * id + 1, gathered on both
        assert o["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
        assert (o["shard_index"], o["num_shards"]) == (pid, 2)
        assert o["rows"] == [float(3 * r) for r in range(4 * pid, 4 * pid + 4)]
        assert o["sum"] == float(sum(range(24)))  # both hosts' rows in one global array
        assert o["agreed"] is True  # the chief's flag, broadcast
    source = "slurm" if via == "slurm" else "environment"
    assert f"jax.distributed: starting from {source}: process 1 of 2" in logs[1]
    assert f"process 1 of 2 joined (coordinator 127.0.0.1:{port})" in logs[1]


def _cli(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xstilts.partitioning"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_the_pod_check_command_on_one_host_and_as_an_srun_step():
    """``python -m xstilts.partitioning`` (what tpu_setup.sh runs on every worker): alone on a
    plain host, and as two ``srun`` tasks on one node (two fake CPU devices each)."""
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out, err = _cli(env).communicate(timeout=120)
    assert out.splitlines() == ["process 0 of 1: 2 local of 2 devices (cpu), 1 slice(s), "
                                "jax.distributed not started, mesh {'data': 2, 'fsdp': 1, "
                                "'tensor': 1}"], err[-2000:]
    assert "not started (no multi-process environment detected)" in err
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
             "JAX_COORDINATOR_PORT": str(_free_port())}
    procs = [_cli({**env, **slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)})
             for i in range(2)]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, (out, err)) in enumerate(zip(procs, results, strict=True)):
        assert p.returncode == 0, err[-3000:]
        # Gloo's C++ logging writes to the same stdout, unbuffered, and can land mid-line or
        # run into our next line without its newline: drop it up to a newline or our "process".
        lines = [line for line in re.sub(r"\[Gloo\].*?(?=process \d|\n|$)", "", out).splitlines()
                 if line]
        assert lines == [
            f"process {i} of 2: 2 local of 4 devices (cpu), 1 slice(s), jax.distributed "
            "started, mesh {'data': 4, 'fsdp': 1, 'tensor': 1}",
            f"process {i}: all 2 processes answered"], repr(out) + err[-3000:]
        assert f"jax.distributed: starting from slurm: process {i} of 2" in err
