"""The warm worker (segmia.warm): a step forked from it is the step run in its own process, with
the job's arguments, directory, descriptors and exit status; a cancelled job stops its step."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_SIZES, snakemake_env, synthetic_ct_job, tiny_spec, train_argv
from segmia.io import read_json

#: a worker that imports only the command line: the tests' steps import the rest in the child
SERVE = (
    "import sys; from segmia.cli import main; from segmia.warm import serve; "
    "serve(sys.argv[1], main, preload=('segmia.cli',))"
)


def _wait_for(predicate, timeout: float = 60, what: str = "the worker") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def worker():
    """A running worker: (socket path, its log file, its process)."""
    # AF_UNIX paths are short: a directory of its own directly under the temporary directory
    directory = Path(tempfile.mkdtemp(prefix="segmia-test-"))
    path, log = directory / "w.sock", directory / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(path)], env=snakemake_env(), stderr=out
        )
    _wait_for(path.exists)
    yield path, log, proc
    proc.terminate()
    proc.wait(timeout=30)
    assert not path.exists(), "the worker removes its socket when it stops"


def _segmia(
    argv, warm: Path | None, cwd=None, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**snakemake_env(), **(env_extra or {})}
    env.pop("SEGMIA_WARM", None)
    if warm is not None:
        env["SEGMIA_WARM"] = str(warm)
    return subprocess.run(
        [sys.executable, "-m", "segmia", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _served(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if " exited " in line]


def _exit_codes(log: Path) -> list[str]:
    """The exit status of every step the worker ran, in order."""
    return [line.split(" exited ")[1].split()[0] for line in _served(log)]


def _children(pid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return out.stdout.split()


def test_a_training_job_through_the_worker_equals_one_run_in_its_own_process(tmp_path, worker):
    path, log, _ = worker
    data, split = synthetic_ct_job(tmp_path, TINY_SIZES)
    spec = tiny_spec(epochs=2)
    runs = {}
    for name, warm in (("own", None), ("warm", path)):
        proc = _segmia(train_argv(data, split, spec, tmp_path / name), warm)
        assert proc.returncode == 0, proc.stderr
        assert "epoch 2/2" in proc.stderr  # the step's log reached the job's own stderr
        runs[name] = tmp_path / name
    assert len(_served(log)) == 1 and "train (process" in _served(log)[0]
    assert _exit_codes(log) == ["0"]
    own, warm = (torch.load(runs[n] / "model.pt", weights_only=True) for n in ("own", "warm"))
    assert own.keys() == warm.keys()
    assert all(torch.equal(own[k], warm[k]) for k in own)
    query = Path("queries") / "mia"
    assert np.array_equal(
        np.load(runs["own"] / query / "logits.npy"), np.load(runs["warm"] / query / "logits.npy")
    )
    own_samples, warm_samples = (runs[n] / query / "samples.csv" for n in ("own", "warm"))
    assert own_samples.read_bytes() == warm_samples.read_bytes()
    metrics = [read_json(runs[n] / "metrics.json") for n in ("own", "warm")]
    for key in ("val_dice", "train_loss", "val_loss"):
        assert metrics[0][key] == metrics[1][key], key


def test_directory_output_and_exit_status_are_the_jobs(tmp_path, worker):
    path, log, _ = worker
    config = tmp_path / "my.yaml"
    config.write_text((REPO / "config" / "demo.yaml").read_text())
    for argv in (["check-config", "my.yaml"], ["check-config", "missing.yaml"], ["nostep"]):
        own, warm = (_segmia(argv, w, cwd=tmp_path) for w in (None, path))
        assert (warm.returncode, warm.stdout, warm.stderr) == (
            own.returncode,
            own.stdout,
            own.stderr,
        ), argv
    assert _exit_codes(log) == ["0", "1", "2"]
    assert own.returncode == 2 and "invalid choice" in own.stderr


def test_the_step_sees_the_jobs_environment_however_large(tmp_path, worker):
    """The worker's own environment keeps every epoch (SEGMIA_CHECKPOINT_SECONDS=0, from the
    tests' set-up); the job's invalid value must be the one its step reads, and a 600 KB
    environment arrives whole."""
    path, log, _ = worker
    data, split = synthetic_ct_job(tmp_path, TINY_SIZES)
    big = {f"SEGMIA_TEST_PAD{i}": "x" * 100_000 for i in range(6)}
    proc = _segmia(
        train_argv(data, split, tiny_spec(epochs=1), tmp_path / "m"),
        path,
        env_extra={**big, "SEGMIA_CHECKPOINT_SECONDS": "soon"},
    )
    assert proc.returncode == 1, proc.stderr
    assert "SEGMIA_CHECKPOINT_SECONDS='soon' is not a number of seconds" in proc.stderr
    assert "train (process" in _served(log)[0]


def test_without_a_worker_the_step_runs_in_its_own_process(tmp_path):
    proc = _segmia(["check-config", str(REPO / "config" / "demo.yaml")], tmp_path / "none.sock")
    assert proc.returncode == 0 and "study " in proc.stdout


def _long_training(tmp_path, path):
    """A forwarded training of many epochs, started once its first epoch is logged: (client
    process, its stderr file, the step's process)."""
    data, split = synthetic_ct_job(tmp_path, TINY_SIZES)
    stderr = tmp_path / "client.err"
    env = {**snakemake_env(), "SEGMIA_WARM": str(path)}
    argv = train_argv(data, split, tiny_spec(epochs=2000), tmp_path / "model")
    with open(stderr, "w") as err:
        client = subprocess.Popen(
            [sys.executable, "-m", "segmia", *argv], env=env, stderr=err, text=True
        )
    _wait_for(lambda: "epoch 1/2000" in stderr.read_text(), what="the first epoch")
    return client, stderr


def test_cancelling_the_job_stops_its_step(tmp_path, worker):
    """Snakemake cancels a job with SIGTERM (relayed to the step) or, failing that, SIGKILL (the
    worker sees the job's connection close and terminates the step)."""
    path, log, proc = worker
    client, _ = _long_training(tmp_path / "term", path)
    (step,) = _children(proc.pid)
    assert Path(f"/proc/{step}/comm").read_text().strip() == "segmia train"
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=60) == 128 + signal.SIGTERM
    client, _ = _long_training(tmp_path / "kill", path)
    client.send_signal(signal.SIGKILL)
    client.wait(timeout=10)
    _wait_for(lambda: len(_served(log)) == 2, timeout=30, what="the step to be terminated")
    assert _exit_codes(log) == ["143", "143"]
    assert not (tmp_path / "kill" / "model" / "model.pt").exists()
    assert _children(proc.pid) == [], "no step is left running"


def test_the_worker_exits_with_the_process_that_started_it(tmp_path):
    directory = Path(tempfile.mkdtemp(prefix="segmia-test-"))
    path = directory / "w.sock"
    # the parent starts the worker and exits after 3 s
    parent = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {SERVE!r}, {str(path)!r}]); time.sleep(3)"
    )
    subprocess.run([sys.executable, "-c", parent], env=snakemake_env(), timeout=60, check=True)
    assert path.exists(), "the worker was serving while its parent ran"
    _wait_for(lambda: not path.exists(), timeout=10, what="the orphaned worker to exit")


def test_the_client_imports_no_step_dependencies():
    """A forwarded job pays for the interpreter and segmia.warm only."""
    code = (
        "import sys; from segmia import warm;"
        "assert warm.forward(['check-config', 'x'], '/nonexistent/w.sock') is None;"
        "heavy = {'torch', 'numpy', 'pandas', 'segmia.cli'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], env=snakemake_env(), check=True, timeout=60)
