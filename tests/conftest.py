"""Shared fixtures: the repository, configs in temporary directories, running Snakemake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "configs"
BIN = Path(sys.executable).parent


def pytest_configure(config):
    # keep every finished epoch (the default: at most once a minute): the resume tests kill
    # trainings between epochs; tests/test_checkpoint_interval.py checks the default
    os.environ["SEGMIA_CHECKPOINT_SECONDS"] = "0"
    # one torch thread per test worker: the suite runs with pytest -n 2 on 2 cores
    import torch

    torch.set_num_threads(1)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def synthetic_ct_job(directory: Path, sizes: dict, groups: int = 10) -> tuple[Path, Path]:
    """A prepared 32x32 synthetic CT dataset (``groups`` patients of 4 slices) and its seed-0
    split with ``sizes``, as a training job reads them: (data directory, split CSV)."""
    from segmia.data.prepared import write_prepared
    from segmia.data.split import make_split
    from segmia.data.synthetic import generate
    from segmia.io import write_csv

    images, masks, index, meta = generate(
        "synthetic_ct", dict(groups=groups, group_size=4, height=32, width=32, noise=0.3, seed=0)
    )
    write_prepared(directory / "data", images, masks, index, meta)
    write_csv(directory / "split.csv", make_split(index, sizes, 0))
    return directory / "data", directory / "split.csv"


def write_config(tmp_path: Path, config: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def tiny_config(tmp_path) -> dict:
    """The tiny workflow config with results and resources under ``tmp_path``."""
    config = load_yaml(CONFIGS / "tiny.yaml")
    config["results"] = str(tmp_path / "results")
    config["resources"] = str(tmp_path / "resources")
    return config


#: the tiny U-Net of the job-level tests (test_models.ARCHS["monai_unet"])
TINY_UNET = {"family": "monai_unet", "channels": [4, 8], "strides": [2], "norm": "batch"}


#: the split sizes of most job-level tests' ``synthetic_ct_job`` data
TINY_SIZES = {"victim_pool": 20, "shadow_pool": 20, "train_size": 12, "val_size": 4, "mia_size": 4}


def tiny_spec(
    train_size: int = 12,
    variant_name: str = "none",
    variant: dict | None = None,
    split: dict | None = None,
    **training,
) -> dict:
    """The spec of a victim ``train`` job: the tiny U-Net on ``synthetic_ct_job``'s data, split
    with ``split`` (default ``TINY_SIZES``; the job queries its MIA set);
    ``training``: the recipe's keys (defaults: 3 epochs, batch 4, lr 1e-3)."""
    return {
        "dataset": "ct",
        "role": "victim",
        "pool": "victim",
        "arch_name": "tiny",
        "arch": TINY_UNET,
        "variant_name": variant_name,
        "variant": variant or {"type": "none"},
        "train_size": train_size,
        "seed": 0,
        "training": {"epochs": 3, "batch_size": 4, "lr": 1e-3, **training},
        "split": split or TINY_SIZES,
    }


def train_argv(data, split, spec: dict, out, *extra: str) -> list[str]:
    """The ``segmia train`` arguments of ``spec`` on the CPU."""
    import json

    return [
        "train",
        *("--data", str(data), "--split", str(split), "--spec", json.dumps(spec)),
        *("--out", str(out), "--device", "cpu", *extra),
    ]


def snakemake_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_snakemake(
    *args: str,
    workdir: Path,
    configfile: Path | None = None,
    check: bool = True,
    timeout: int = 900,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run this venv's Snakemake on the repository's Snakefile with its own working directory
    (its own .snakemake/ metadata and lock), so tests can run in parallel. ``env``: variables
    to set (a value of None removes the variable)."""
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
    ]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += list(args)
    full_env = snakemake_env()
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def run_segmia(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "segmia", *args],
        capture_output=True,
        text=True,
        env=snakemake_env(),
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"segmia {args[0]} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(proc) -> dict[str, int]:
    """Job counts per rule from a dry run's "Job stats" table."""
    out = proc.stdout + proc.stderr
    counts: dict[str, int] = {}
    block = out.split("Job stats:")[1].split("\n\n")[0] if "Job stats:" in out else ""
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts
