"""One GPU per job on a multi-GPU workstation: the flock-based allocator, with fake GPU counts
and real concurrent processes (no GPU needed)."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from segmia import gpus
from segmia.errors import SegmiaError

# a GPU job: claims a device among COUNT fake GPUs, prints it and holds it until stdin closes
HOLDER = """
import sys
from segmia.gpus import claim_gpu
env = {}
count, lock_dir, timeout = int(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    device = claim_gpu(env=env, count=count, lock_dir=lock_dir,
                       timeout=None if timeout == "none" else float(timeout))
except Exception as err:
    print("error", type(err).__name__, err, flush=True)
    sys.exit(3)
print(device, env.get("CUDA_VISIBLE_DEVICES"), flush=True)
sys.stdin.read()
"""


def _env():
    env = {k: v for k, v in os.environ.items() if k not in gpus.SCHEDULER_JOB_VARS}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["PYTHONPATH"] = f"{REPO / 'workflow'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def start_holder(lock_dir, count=2, timeout="none"):
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(count), str(lock_dir), str(timeout)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def claimed(proc) -> str:
    """The device a holder claimed (also what it set CUDA_VISIBLE_DEVICES to)."""
    device, visible = proc.stdout.readline().split()
    assert device == visible
    return device


def finish(*procs):
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
        p.wait(timeout=10)


@pytest.fixture(autouse=True)
def _no_claim_left():
    yield
    gpus.release_gpu()


def test_concurrent_holders_never_share_a_gpu(tmp_path):
    procs = [start_holder(tmp_path, count=4) for _ in range(4)]  # started together: they race
    try:
        devices = [claimed(p) for p in procs]
        assert sorted(devices) == ["0", "1", "2", "3"]
    finally:
        finish(*procs)


def test_a_job_waits_for_a_free_gpu_and_gets_the_released_one(tmp_path):
    a, b = start_holder(tmp_path), start_holder(tmp_path)
    try:
        first, second = claimed(a), claimed(b)
        assert {first, second} == {"0", "1"}
        c = start_holder(tmp_path)
        time.sleep(1.5)
        assert c.poll() is None  # still waiting: both GPUs are held
        finish(b)  # b's job ends normally
        assert claimed(c) == second
        finish(c)
    finally:
        finish(a, b)


def test_waiting_gives_up_after_the_timeout_with_a_clear_message(tmp_path):
    a, b = start_holder(tmp_path), start_holder(tmp_path)
    try:
        claimed(a), claimed(b)
        c = start_holder(tmp_path, timeout=0.3)
        line = c.stdout.readline()
        assert c.wait(timeout=10) == 3
        assert "SegmiaError" in line and "gpu=<number of GPUs>" in line
    finally:
        finish(a, b)


def test_a_crashed_holders_gpu_is_released_by_the_os(tmp_path):
    a = start_holder(tmp_path)
    assert claimed(a) == "0"
    a.send_signal(signal.SIGKILL)  # no cleanup code runs
    a.wait(timeout=10)
    b = start_holder(tmp_path)
    try:
        assert claimed(b) == "0"
    finally:
        finish(b)


def test_in_process_claim_sets_the_environment_and_is_idempotent(tmp_path):
    env = {}
    assert gpus.claim_gpu(env=env, count=3, lock_dir=tmp_path) == "0"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert gpus.claim_gpu(env=env, count=3, lock_dir=tmp_path) == "0"
    assert (tmp_path / "segmia-gpu-0.lock").exists()
    gpus.release_gpu()
    assert gpus.acquire(["0"], tmp_path, timeout=0)[0] == "0"  # released


def test_a_user_restriction_is_honoured(tmp_path):
    other = gpus.acquire(["2"], tmp_path, timeout=0)  # GPU 2 is taken by another job
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    try:
        assert gpus.claim_gpu(env=env, lock_dir=tmp_path) == "3"
        assert env["CUDA_VISIBLE_DEVICES"] == "3"
    finally:
        os.close(other[1])


@pytest.mark.parametrize(
    "env, count",
    [
        ({"SLURM_JOB_ID": "42"}, 4),  # the scheduler assigns devices
        ({"CUDA_VISIBLE_DEVICES": "1"}, 4),  # one device given: nothing to choose
        ({}, 1),  # a single GPU
        ({}, 0),  # no GPU
        ({"SEGMIA_GPU_LOCKS": "0"}, 4),  # switched off
    ],
)
def test_no_claim_when_there_is_nothing_to_choose(tmp_path, env, count):
    before = dict(env)
    assert gpus.claim_gpu(env=env, count=count, lock_dir=tmp_path) is None
    assert env == before
    assert not list(tmp_path.iterdir())


def test_timeout_zero_raises_when_all_are_taken(tmp_path):
    held = gpus.acquire(["0"], tmp_path, timeout=0)
    try:
        with pytest.raises(SegmiaError, match="stayed in use"):
            gpus.acquire(["0"], tmp_path, timeout=0)
    finally:
        os.close(held[1])


def test_runtime_setup_claims_a_gpu_before_cuda_starts(tmp_path, monkeypatch):
    from segmia.runtime import setup

    for var in (*gpus.SCHEDULER_JOB_VARS, "CUDA_VISIBLE_DEVICES", "SEGMIA_GPU_LOCKS"):
        monkeypatch.setenv(var, "x")  # so that monkeypatch restores the original state
        monkeypatch.delenv(var)
    monkeypatch.setenv("SEGMIA_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(gpus, "count_gpus", lambda: 2)
    device = setup("auto", threads=1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert (tmp_path / "segmia-gpu-0.lock").exists()
    assert device.type in ("cpu", "cuda")  # no real GPU here: auto falls back to the CPU
    setup("cpu", threads=1)  # a CPU job claims nothing more
    assert gpus._held[0] == "0"
