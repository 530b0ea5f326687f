"""Device, seeding, determinism, mixed precision, progress and resumable epoch checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .errors import SegmiaError
from .hardware import gpu_visible  # noqa: F401  (moved: the Snakefile must not import torch)
from .io import read_torch, write_torch

log = logging.getLogger("segmia")


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed derived from ``parts`` (stable across runs and machines)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def setup(device: str = "auto", threads: int = 1, deterministic: bool = True) -> torch.device:
    """Pick the device (CUDA when present for ``auto``), set threads and determinism.

    On a machine with several GPUs and no scheduler, a CUDA job first claims one GPU for itself
    (segmia.gpus), so concurrent Snakemake jobs do not share a device."""
    torch.set_num_threads(max(1, threads))
    if device in ("auto", "cuda"):
        # several GPUs and no scheduler (profiles/gpu-workstation): take one of them for this
        # process, before CUDA starts; a no-op on CPU-only machines and in SLURM jobs
        from .gpus import claim_gpu

        claim_gpu()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import SegmiaError

        raise SegmiaError(
            "device: cuda is configured but no CUDA device is visible. Set device: auto (or cpu) "
            "in the config, or run on a GPU node."
        )
    if device == "cuda":
        if deterministic:
            # CPU kernels are deterministic already; on CUDA this costs speed (no cudnn autotuning,
            # deterministic scatter/index kernels) and needs a fixed cuBLAS workspace.
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(device)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of ``device``: bf16 where supported (CPU, Ampere+ GPUs), else fp16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """bf16 autocast on CUDA devices that support it (fp16 otherwise).

    Nothing on the CPU unless ``cpu`` (bf16 autocast there: faster where the CPU has bf16
    instructions, e.g. AVX512-BF16 or AMX; tests and benchmarks compare it with float32).
    fp16 training needs loss scaling: see :func:`grad_scaler`.
    """
    if not enabled or (device.type != "cuda" and not (cpu and device.type == "cpu")):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device))


def grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A loss scaler, active only where autocast trains in fp16 (CUDA without bf16).

    A disabled scaler is a no-op: ``scale(loss)`` returns ``loss``, ``step(opt)`` calls
    ``opt.step()``.
    """
    active = enabled and device.type == "cuda" and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=active)


from .logs import configure_logging  # noqa: E402, F401  (moved; kept importable from here)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class EpochProgress:
    """Per-epoch log lines with elapsed time and ETA; a tqdm bar when stderr is a terminal."""

    def __init__(self, what: str, epochs: int, first_epoch: int = 0):
        self.what, self.epochs, self.first = what, epochs, first_epoch
        self.start = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=epochs, initial=first_epoch, desc=what, unit="epoch", leave=False)
        if first_epoch:
            log.info("%s: resuming after epoch %d of %d", what, first_epoch, epochs)

    def update(self, epoch: int, **values: float) -> None:
        """Report that 0-based ``epoch`` finished."""
        done = epoch + 1 - self.first
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (self.epochs - epoch - 1)
        text = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        log.info(
            "%s epoch %d/%d %s elapsed %s eta %s",
            self.what,
            epoch + 1,
            self.epochs,
            text,
            _clock(elapsed),
            _clock(eta),
        )
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: a finished epoch is kept at most this often, and the last one always: a kill loses at most
#: this much training, and small epochs do not pay for writing model and optimizer state each
#: time. The environment variable SEGMIA_CHECKPOINT_SECONDS overrides it (0: every epoch).
CHECKPOINT_SECONDS = 60.0


def checkpoint_seconds() -> float:
    value = os.environ.get("SEGMIA_CHECKPOINT_SECONDS", str(CHECKPOINT_SECONDS))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise SegmiaError(
            f"SEGMIA_CHECKPOINT_SECONDS={value!r} is not a number of seconds >= 0. Set it to how "
            "often a training job may keep its last finished epoch (0: after every epoch), or "
            f"unset it for the default of {CHECKPOINT_SECONDS:g} s."
        )
    return seconds


class Checkpoint:
    """The last kept epoch of a job, beside (not among) its declared outputs.

    Snakemake deletes the outputs of an incomplete job before rerunning it, so the checkpoint lives
    in ``<out>/.checkpoint/``; it is tied to the job's spec (a changed spec starts afresh) and
    removed once the job's outputs are written. An epoch is kept when ``checkpoint_seconds()``
    have passed since the last one was (or since the job started), and the last epoch always.
    """

    def __init__(self, out_dir: str | Path, spec: dict):
        self.dir = Path(out_dir) / ".checkpoint"
        self.path = self.dir / "last.pt"
        self.key = spec_hash(spec)
        self.every = checkpoint_seconds()
        self.kept_at = time.monotonic()

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = read_torch(self.path)
        except Exception as err:  # a checkpoint cut short by a kill: start afresh
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, err)
            return None
        if state.get("key") != self.key:
            log.info("checkpoint %s belongs to another configuration; starting afresh", self.path)
            return None
        return state

    def save(self, state: dict) -> None:
        write_torch(self.path, {**state, "key": self.key})

    def resume(self, model, optimizer, scaler) -> tuple[dict, list[dict], int]:
        """Restore model, optimizer, loss scaler and random state from the last finished epoch:
        (the saved state, the epoch rows so far, the next epoch); ({}, [], 0) without one."""
        state = self.load()
        if state is None:
            return {}, [], 0
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        return state, list(state["rows"]), int(state["epoch"]) + 1

    def save_epoch(
        self, epoch: int, rows: list[dict], model, optimizer, scaler, *, last: bool, **extra
    ) -> None:
        """Keep a finished epoch when it is due (or ``last``): the states ``resume`` restores,
        plus the trainer's ``extra``."""
        if not last and time.monotonic() - self.kept_at < self.every:
            return
        self.kept_at = time.monotonic()
        self.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(),
                "rows": rows,
                "epoch": epoch,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                **extra,
            }
        )

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
