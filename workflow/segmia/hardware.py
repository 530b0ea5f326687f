"""What the machine offers, found without importing torch (the Snakefile asks at every start)."""

from __future__ import annotations

import shutil
from pathlib import Path


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch (cheap, for the Snakefile)."""
    return Path("/dev/nvidiactl").exists() or bool(
        shutil.which("nvidia-smi") and Path("/proc/driver/nvidia").exists()
    )
