"""One GPU per job on a multi-GPU machine without a scheduler (profiles/gpu-workstation).

Snakemake's local executor limits how many GPU jobs run at once (``resources: gpu=N``) but does
not tell a job *which* GPU to use, so every job would start on GPU 0. Each GPU job therefore
claims a device at start-up: it takes an exclusive ``flock`` on a per-GPU lock file
(``/tmp/segmia-gpu-<id>.lock``, the directory can be changed with ``SEGMIA_GPU_LOCK_DIR``), keeps
it for the lifetime of the process and restricts itself to that device with
``CUDA_VISIBLE_DEVICES``. The operating system releases the lock when the process ends, however it
ends (a crash or ``kill -9`` included), so no lock is ever left stale.

Nothing is claimed when
- a batch scheduler runs the job (SLURM, PBS, LSF, SGE set a job id): it assigns the devices;
- fewer than two GPUs are visible (nothing to choose);
- ``SEGMIA_GPU_LOCKS=0`` is set.

``CUDA_VISIBLE_DEVICES`` set by the user (e.g. ``2,3`` on a shared workstation) is honoured: the
job claims one of the listed devices.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

from .errors import SegmiaError

log = logging.getLogger("segmia")

LOCK_DIR = "/tmp"
SCHEDULER_JOB_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")

# the claimed device and the open lock file: kept for the whole process (closing releases it)
_held: tuple[str, int] | None = None


def count_gpus() -> int:
    """NVIDIA GPUs on this machine, without initialising CUDA (which would freeze
    ``CUDA_VISIBLE_DEVICES`` for this process)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        return sum(1 for _ in gpus.iterdir())
    except OSError:
        return 0


def candidate_devices(env: Mapping[str, str], count: int | None = None) -> list[str]:
    """The devices a job may claim: those listed in ``CUDA_VISIBLE_DEVICES`` if set, else all."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(count_gpus() if count is None else count)]


def should_claim(env: Mapping[str, str], devices: Sequence[str]) -> bool:
    if env.get("SEGMIA_GPU_LOCKS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(env.get(var) for var in SCHEDULER_JOB_VARS):
        return False
    return len(devices) > 1


def _lock_path(lock_dir: str | Path, device: str) -> Path:
    return Path(lock_dir) / f"segmia-gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another process holds it."""
    try:  # read-only: flock needs no write access, so another user's lock file works too
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def acquire(
    devices: Sequence[str],
    lock_dir: str | Path = LOCK_DIR,
    timeout: float | None = None,
    poll: float = 0.5,
) -> tuple[str, int]:
    """Lock the first free device of ``devices``; wait while all are taken.

    Returns ``(device, fd)``; the lock is held until ``fd`` is closed or the process ends.
    Raises SegmiaError after ``timeout`` seconds (None: wait for ever, logging every minute).
    """
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    start = next_note = time.monotonic()
    while True:
        for device in devices:
            fd = _try_lock(_lock_path(lock_dir, device))
            if fd is not None:
                return device, fd
        now = time.monotonic()
        if timeout is not None and now - start >= timeout:
            raise SegmiaError(
                f"all GPUs ({', '.join(devices)}) stayed in use by other segmia jobs for "
                f"{timeout:.0f} s (locks {_lock_path(lock_dir, '<id>')}). Run at most as many GPU "
                "jobs as there are GPUs (snakemake --resources gpu=<number of GPUs>)."
            )
        if now >= next_note:
            log.info(
                "waiting for a free GPU among %s (all locked by other jobs)", ", ".join(devices)
            )
            next_note = now + 60
        time.sleep(poll)


def claim_gpu(
    env: MutableMapping[str, str] | None = None,
    count: int | None = None,
    lock_dir: str | Path | None = None,
    timeout: float | None = None,
) -> str | None:
    """Claim one GPU for this process when several are visible and no scheduler assigns them.

    Sets ``CUDA_VISIBLE_DEVICES`` in ``env`` (default ``os.environ``) to the claimed device, or,
    when CUDA is already initialised in this process, selects it with ``torch.cuda.set_device``.
    Returns the claimed device id, or None when nothing was claimed. Idempotent.
    """
    global _held
    env = os.environ if env is None else env
    if _held is not None:
        return _held[0]
    devices = candidate_devices(env, count)
    if not should_claim(env, devices):
        return None
    lock_dir = lock_dir or env.get("SEGMIA_GPU_LOCK_DIR") or LOCK_DIR
    device, fd = acquire(devices, lock_dir, timeout=timeout)
    _held = (device, fd)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        # too late for CUDA_VISIBLE_DEVICES: the driver read it when CUDA started
        torch.cuda.set_device(devices.index(device))
    else:
        env["CUDA_VISIBLE_DEVICES"] = device
    log.info(
        "claimed GPU %s of %s (lock %s)", device, ", ".join(devices), _lock_path(lock_dir, device)
    )
    return device


def release_gpu() -> None:
    """Release the claimed GPU (normally left to the end of the process)."""
    global _held
    if _held is not None:
        os.close(_held[1])
        _held = None
