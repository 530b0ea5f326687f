"""Failure injection through Snakemake on a reduced tiny config: killed jobs resume to the same results, runs are reproducible, a second
Snakemake on the same working directory is locked out, corrupt prepared data stops the split rule,
and download credentials never reach a file or the console. The reduced config: tiny.yaml with one
architecture and the type2 attack (12 training epochs, 30 attack epochs).

One uninterrupted reference run is shared by every test (and pytest-xdist worker) of the session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BIN, CONFIGS, REPO, load_yaml, run_snakemake, snakemake_env, write_config
from segmia.io import read_torch

pytestmark = pytest.mark.slow

TARGETS = ("summary/models.csv", "summary/attacks.csv")
#: wall-time fields: the only ones allowed to differ between two runs
TIMING = {"train_seconds", "job_seconds", "seconds", "teacher_seconds"}
MODELS = "results/ct/models"
ATTACK = "results/ct/attack_models/type2/none/tiny/none/n24_s0"


def reduced_config(tmp: Path, attacks: tuple[str, ...] = ("type2",)) -> dict:
    """tiny.yaml with one architecture and one attack; epochs long enough to be killed in."""
    config = load_yaml(CONFIGS / "tiny.yaml")
    config["results"] = str(tmp / "results")
    config["resources"] = str(tmp / "resources")
    config["training"]["epochs"] = 12
    config["attack"]["epochs"] = 30
    config["architectures"] = {"tiny": config["architectures"]["tiny"]}
    config["studies"]["grid"].update(architectures=["tiny"], attacks=list(attacks))
    return config


def targets(tmp: Path) -> list[str]:
    return [str(tmp / "results" / t) for t in TARGETS]


def snakemake_cmd(tmp: Path, *args: str) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp),
        "--configfile",
        str(tmp / "config.yaml"),
        *args,
    ]


def start(tmp: Path, *args: str) -> subprocess.Popen:
    """Snakemake in its own process group (so the test can kill it and its jobs at once)."""
    return subprocess.Popen(
        snakemake_cmd(tmp, *args),
        stdout=(tmp / "snakemake.out").open("a"),
        stderr=subprocess.STDOUT,
        env=snakemake_env(),
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_for_epoch(path: Path, epoch: int, proc: subprocess.Popen, timeout: float = 600) -> int:
    """Poll a job's epoch checkpoint until it records 0-based ``epoch`` (or later)."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"snakemake ended ({proc.returncode}) before epoch {epoch}"
        try:
            stat = path.stat()
        except FileNotFoundError:
            stat = None
        if stat is not None and (stat.st_ino, stat.st_mtime_ns) != seen:  # a new checkpoint
            seen = (stat.st_ino, stat.st_mtime_ns)
            try:
                done = int(read_torch(path)["epoch"])
            except Exception:  # renamed away while reading
                done, seen = -1, None
            if done >= epoch:
                return done
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach epoch {epoch}")


def job_pids(proc: subprocess.Popen, step: str) -> list[int]:
    """The python processes of ``segmia <step>`` jobs of a Snakemake started by ``start``."""
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "-g", str(proc.pid)], capture_output=True, text=True
    ).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        words = args.split()
        if words and Path(words[0]).name.startswith("python") and f"segmia {step}" in args:
            pids.append(int(pid))
    return pids


# --- the shared reference run ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted run of the reduced config, made once per session (across xdist workers)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers
    tmp = root / "reliability_reference"
    with FileLock(str(tmp) + ".lock"):
        if not (tmp / "done").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write_config(tmp, reduced_config(tmp))
            run_snakemake(
                "--cores", "2", *targets(tmp), workdir=tmp, configfile=tmp / "config.yaml"
            )
            (tmp / "done").touch()
    return tmp


def _frame(path: Path, root: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    if "path" in frame:  # absolute result paths: compare them below the results root
        frame["path"] = frame["path"].str.replace(str(root), "<results>", regex=False)
    return frame


def _drop_timing(obj):
    if isinstance(obj, dict):
        return {k: _drop_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_drop_timing(v) for v in obj]
    return obj


def _tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def result_files(tmp: Path) -> list[str]:
    """Every output under results/ (not logs, benchmarks or hidden files)."""
    root = tmp / "results"
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file()
        and p.relative_to(root).parts[0] not in ("logs", "benchmarks")
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def assert_same_results(a: Path, b: Path) -> set[str]:
    """Every output of run ``b`` equals run ``a``'s; returns the timing fields that differed."""
    files = result_files(a)
    assert files == result_files(b)
    assert any(f.endswith("model.pt") for f in files) and "summary/attacks.csv" in files
    differing: set[str] = set()
    for name in files:
        fa, fb = a / "results" / name, b / "results" / name
        if name.endswith(".pt"):
            assert _tensors_equal(read_torch(fa), read_torch(fb)), name
        elif name.endswith(".json"):
            ja, jb = json.loads(fa.read_text()), json.loads(fb.read_text())
            assert _drop_timing(ja) == _drop_timing(jb), name
            differing |= {k for k in TIMING & ja.keys() if ja[k] != jb.get(k)}
        elif name.endswith(".csv"):
            ca, cb = _frame(fa, a / "results"), _frame(fb, b / "results")
            assert list(ca.columns) == list(cb.columns), name
            timing = [c for c in ca.columns if c in TIMING]
            pd.testing.assert_frame_equal(ca.drop(columns=timing), cb.drop(columns=timing))
            differing |= {c for c in timing if not ca[c].equals(cb[c])}
        else:
            assert fa.read_bytes() == fb.read_bytes(), name
    return differing


# --- determinism and the lock ----------------------------------------------------------------------


def test_same_seed_gives_identical_results_and_a_second_snakemake_is_locked_out(
    reference_run, tmp_path
):
    # the first run must still hold the lock when the second starts: its jobs start afresh
    # (no warm worker), which also checks that they give the warm reference run's results
    config = reduced_config(tmp_path)
    config["warm_worker"] = False
    write_config(tmp_path, config)
    first = start(tmp_path, "--cores", "1", *targets(tmp_path))
    try:
        locks = tmp_path / ".snakemake" / "locks"
        deadline = time.monotonic() + 600
        while not (locks.exists() and any(locks.iterdir())):
            assert first.poll() is None and time.monotonic() < deadline, "first run did not start"
            time.sleep(0.1)
        second = run_snakemake(
            "--cores", "1", *targets(tmp_path), workdir=tmp_path,
            configfile=tmp_path / "config.yaml", check=False,
        )  # fmt: skip
        assert first.poll() is None, "the first run ended before the second was started"
        out = second.stdout + second.stderr
        assert second.returncode == 1, out
        assert "LockException" in out and "Directory cannot be locked" in out, out
        assert "--unlock" in out and "Traceback" not in out
        assert first.wait(timeout=900) == 0, (tmp_path / "snakemake.out").read_text()[-3000:]
    finally:
        kill_group(first)

    # nothing was corrupted, and every output equals the reference run's
    differing = assert_same_results(reference_run, tmp_path)
    split = "results/ct/splits/s0.csv"
    assert (tmp_path / split).read_bytes() == (reference_run / split).read_bytes()
    for name in TARGETS:
        a = _frame(reference_run / "results" / name, reference_run / "results")
        b = _frame(tmp_path / "results" / name, tmp_path / "results")
        keep = [c for c in a.columns if c not in TIMING]
        pd.testing.assert_frame_equal(a[keep], b[keep])
    # only wall time may differ (and does: the comparison above is not vacuous)
    assert differing <= TIMING and "train_seconds" in differing, differing


def test_another_seed_changes_the_split_and_the_summaries(reference_run, tmp_path):
    write_config(tmp_path, reduced_config(tmp_path))
    run_snakemake(
        "--cores", "2", *targets(tmp_path), "--config", "seeds=[1]", workdir=tmp_path,
        configfile=tmp_path / "config.yaml",
    )  # fmt: skip
    splits = tmp_path / "results" / "ct" / "splits"
    assert [p.name for p in splits.iterdir()] == ["s1.csv"]
    s0 = pd.read_csv(reference_run / "results" / "ct" / "splits" / "s0.csv")
    s1 = pd.read_csv(splits / "s1.csv")
    assert (s0["sample_id"] == s1["sample_id"]).all()  # same samples, other assignment
    assert (s0[["pool", "role", "order"]] != s1[["pool", "role", "order"]]).any(axis=None)

    a = pd.read_csv(reference_run / "results" / "summary" / "models.csv")
    b = pd.read_csv(tmp_path / "results" / "summary" / "models.csv")
    assert set(b["seed"]) == {1} and set(a["seed"]) == {0}
    assert not np.allclose(a.sort_values("role")["val_dice"], b.sort_values("role")["val_dice"])
    a = pd.read_csv(reference_run / "results" / "summary" / "attacks.csv").set_index("attack")
    b = pd.read_csv(tmp_path / "results" / "summary" / "attacks.csv").set_index("attack")
    assert list(b.index) == ["type2"] and set(b["seed"]) == {1}
    assert a.loc["type2", "auc"] != b.loc["type2", "auc"]


# --- killed jobs -----------------------------------------------------------------------------------


def test_killed_training_and_attack_jobs_resume_to_the_same_results(reference_run, tmp_path):
    write_config(tmp_path, reduced_config(tmp_path))
    cores = ("--cores", "1")

    # 1. the whole Snakemake (and its training job) dies mid-epoch: a node failure, kill -9.
    #    The shadow's training is the one killed: the attack fit of step 4 needs it rerun first
    #    (the victim's may run before or after it, as Snakemake orders them).
    run = start(tmp_path, *cores, *targets(tmp_path))
    checkpoint = (
        tmp_path / MODELS / "shadow" / "tiny" / "none" / "n24_s0" / ".checkpoint" / "last.pt"
    )
    try:
        wait_for_epoch(checkpoint, 2, run)
    finally:
        kill_group(run)
    model_dir = checkpoint.parent.parent
    killed_epoch = int(read_torch(checkpoint)["epoch"])
    assert killed_epoch < 11, "training finished before it was killed"
    assert not (model_dir / "model.pt").exists() and not (model_dir / "metrics.json").exists()

    # 2. had the job been killed after writing model.pt but before metrics.json, Snakemake would
    #    not take model.pt for finished: it is marked incomplete until the job ends. Without a
    #    profile Snakemake refuses to go on; the default profile (rerun-incomplete) reruns it.
    (model_dir / "model.pt").write_bytes(b"written before the kill")
    proc = run_snakemake("-n", *cores, "--workflow-profile", "none", *targets(tmp_path),
                         workdir=tmp_path, check=False, configfile=tmp_path / "config.yaml")  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "IncompleteFilesException" in out, out
    assert str(model_dir / "model.pt") in out and "--rerun-incomplete" in out
    proc = run_snakemake("-n", *cores, *targets(tmp_path), workdir=tmp_path,
                         configfile=tmp_path / "config.yaml")  # fmt: skip
    (killed_job,) = [
        block
        for block in proc.stdout.split("rule train:")
        if f"output: {model_dir}/model.pt" in block
    ]
    assert killed_job.split("reason:")[1].splitlines()[0].strip() == "Forced execution", killed_job

    # 3. the dead run's lock stays (a real run would be refused, as in the concurrency test)
    assert list((tmp_path / ".snakemake" / "locks").iterdir())
    run_snakemake("--unlock", *cores, workdir=tmp_path, configfile=tmp_path / "config.yaml")

    # 4. rerun: training resumes; then only the attack job is killed mid-epoch (OOM killer)
    run = start(tmp_path, *cores, "--rerun-incomplete", *targets(tmp_path))
    try:
        wait_for_epoch(tmp_path / ATTACK / ".checkpoint" / "last.pt", 1, run)
        pids = job_pids(run, "fit-attack")
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        assert run.wait(timeout=300) == 1
    finally:
        kill_group(run)
    out = (tmp_path / "snakemake.out").read_text()
    assert "Error in rule fit_attack" in out
    # onerror says where the failed job's log is
    assert "segmia: 1 job(s) failed" in out and "  rule fit_attack: log " in out, out[-3000:]
    assert not (tmp_path / ATTACK / "attack.pt").exists()
    locks = tmp_path / ".snakemake" / "locks"
    assert not locks.exists() or not list(locks.iterdir())  # released: no --unlock needed
    train_log = (
        tmp_path
        / "results"
        / "logs"
        / "train"
        / model_dir.relative_to(tmp_path / "results").with_suffix(".log")
    )
    assert f"resuming after epoch {killed_epoch + 1} of 12" in train_log.read_text()

    # 5. rerun: the attack resumes too, and everything equals the uninterrupted run
    run_snakemake("--cores", "2", "--rerun-incomplete", *targets(tmp_path), workdir=tmp_path,
                  configfile=tmp_path / "config.yaml")  # fmt: skip
    attack_log = tmp_path / "results" / "logs" / "fit_attack" / f"{ATTACK[8:]}.log"
    assert re.search(r"resuming after epoch \d+ of 30", attack_log.read_text())
    assert not list((tmp_path / "results").rglob(".checkpoint"))
    assert_same_results(reference_run, tmp_path)


# --- corrupt prepared data: the split rule stops, naming the file ----------------------------------


CORRUPTIONS = ("truncated_images", "labels_outside_the_class_set", "index_shorter_than_arrays")


def test_corrupt_prepared_data_stops_the_split_rule_naming_the_file(tmp_path):
    """Three datasets, each damaged another way, split by one Snakemake run (--keep-going)."""
    from segmia.data.prepared import write_prepared
    from segmia.data.synthetic import generate
    from test_reliability import _corrupt

    config = reduced_config(tmp_path)
    ct = config["datasets"].pop("ct")
    expected = {}
    for how in CORRUPTIONS:
        name = f"ct_{how}"
        config["datasets"][name] = ct
        data = tmp_path / "resources" / "prepared" / name
        images, masks, index, meta = generate("synthetic_ct", ct["synthetic"])
        write_prepared(data, images, masks, index, {**meta, "name": name})  # as synthesize does
        expected[name] = (data, _corrupt(data, how))
    config["studies"]["grid"]["dataset"] = f"ct_{CORRUPTIONS[0]}"
    write_config(tmp_path, config)
    splits = [tmp_path / "results" / name / "splits" / "s0.csv" for name in expected]
    proc = run_snakemake("--cores", "2", "--keep-going", *map(str, splits), workdir=tmp_path,
                         check=False, configfile=tmp_path / "config.yaml")  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and out.count("Error in rule split") == 3, out
    assert "rule synthesize" not in out  # the damaged files were read, not regenerated
    assert "Traceback" not in out
    for (name, (data, file)), split in zip(expected.items(), splits, strict=True):
        log = (tmp_path / "results" / "logs" / "split" / f"{name}_s0.log").read_text()
        assert "Traceback" not in log
        (line,) = [line for line in log.splitlines() if "error:" in line]
        assert line.startswith("segmia split: error: ") and str(data) in line and file in line
        assert not split.exists()


# --- credentials -----------------------------------------------------------------------------------


def test_cityscapes_password_never_reaches_a_file_or_the_console(tmp_path):
    from upstream import PASSWORD, USER, Upstream, cityscapes_trees, zip_bytes

    server = Upstream()
    try:
        for name, files in cityscapes_trees().items():
            server.files[f"/{name}"] = zip_bytes(files)
        config = {
            "results": str(tmp_path / "results"),
            "resources": str(tmp_path / "resources"),
            "device": "cpu",
            "datasets": {
                "cityscapes": {
                    "source": "cityscapes",
                    "download": {"base_url": server.url, "retries": 1, "backoff": 0.01},
                    "prepare": {"height": 16, "width": 68},
                    "split": {
                        "victim_pool": 2,
                        "shadow_pool": 2,
                        "train_size": 1,
                        "val_size": 1,
                        "mia_size": 1,
                        "nonmembers": "validation",
                        "groups": "pools",  # cities whole between the pools only (paper config)
                    },
                }  # fmt: skip
            },
            "architectures": {"tiny": {"family": "monai_unet", "channels": [4, 8], "strides": [2]}},
            "studies": {
                "s": {"type": "architectures", "dataset": "cityscapes", "architectures": ["tiny"]}
            },  # fmt: skip
        }
        configfile = write_config(tmp_path, config)
        split = str(tmp_path / "results" / "cityscapes" / "splits" / "s0.csv")
        env = {"CITYSCAPES_USERNAME": USER, "CITYSCAPES_PASSWORD": PASSWORD}
        runs = [
            run_snakemake("--cores", "1", split, workdir=tmp_path, configfile=configfile, env=env),
            # a report of what ran (rules, commands, parameters, run times)
            run_snakemake(
                "--report",
                str(tmp_path / "report.html"),
                split,
                workdir=tmp_path,
                configfile=configfile,
                env=env,
            ),  # fmt: skip
        ]
        assert "/file-handling/?packageID=1" in server.paths()  # logged in and downloaded
    finally:
        server.close()
    assert (tmp_path / "report.html").stat().st_size > 10_000
    console = "".join(r.stdout + r.stderr for r in runs)
    assert PASSWORD not in console
    scanned = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("benchmarks" in p.parts for p in scanned) and any(
        ".snakemake" in p.parts for p in scanned
    )
    leaks = [str(p) for p in scanned if PASSWORD.encode() in p.read_bytes()]
    assert not leaks, leaks
