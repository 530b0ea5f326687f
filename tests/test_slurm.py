"""The pipeline on a real SLURM cluster (one node, this machine) through profiles/slurm.

The session fixture starts munged, slurmctld and slurmd with tests/slurm/cluster.sh (root and the
Debian packages slurm-wlm and munge are needed; .ci/run installs them) and stops them afterwards
if it started them. A reduced tiny config (one architecture, Type-II and global-loss attacks) runs
twice at the same time: through `snakemake --workflow-profile <profiles/slurm adapted to this
node>` and locally. The test asserts that every non-local job went through sbatch and that the
results are the same as the local run's.

By hand: tests/slurm/cluster.sh start; python -m pytest -m slurm -s tests/test_slurm.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import snakemake
import torch
import yaml
from conftest import BIN, CONFIGS, REPO, load_yaml, snakemake_env, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
PARTITION = "debug"  # the partition cluster.sh configures
JOBCOMP_LOG = Path("/var/log/slurm/jobcomp.log")  # SLURM's record of every finished job
REMOTE_RULES = {
    "synthesize",
    "split",
    "train",
    "fit_attack",
    "evaluate",
}
LOCAL_RULES = {
    "table",
    "figure",
    "study_summary",
    "summary_attacks",
    "summary_models",
    "reproduction",
    "all",
}
TIMING = ["train_seconds", "job_seconds"]
# compared between the SLURM and the local run (besides the split and the summaries)
COMPARED_FILES = (
    "ct/models/victim/tiny/none/n24_s0/metrics.json",
    "ct/models/shadow/tiny/none/n24_s0/metrics.json",
    "ct/attacks/none/tiny/none/vs_tiny/none/n24_s0/type2/scores.csv",
    "ct/attacks/none/tiny/none/vs_tiny/none/n24_s0/global_loss/scores.csv",
    "tables/grid/type2.csv",
    "tables/grid/global_loss.csv",
)  # the only run-dependent columns of summary/models.csv


def _missing_slurm() -> list[str]:
    return [
        b
        for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
        if not shutil.which(b) and not Path("/usr/sbin", b).exists()
    ]


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster; stopped at the end if this fixture started it."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (it starts munged, slurmctld and slurmd)")
    if missing := _missing_slurm():
        pytest.skip(
            f"SLURM not installed ({', '.join(missing)}): apt-get install -y slurm-wlm munge"
        )
    was_running = subprocess.run([CLUSTER, "status"], capture_output=True).returncode == 0
    start = subprocess.run([CLUSTER, "start"], capture_output=True, text=True, timeout=180)
    if start.returncode == 2:  # not ours to touch (another slurm.conf), or no munge key
        pytest.skip(start.stderr.strip())
    assert start.returncode == 0, f"cluster.sh start failed:\n{start.stdout}\n{start.stderr}"
    yield PARTITION
    if not was_running:
        subprocess.run([CLUSTER, "stop"], capture_output=True, timeout=120)


def small_config(root: Path) -> dict:
    """tests/configs/tiny.yaml reduced to one architecture, two attacks (fewer jobs) and fewer
    epochs: this test is about where jobs run, not how well the attacks work."""
    config = load_yaml(CONFIGS / "tiny.yaml")
    config["training"]["epochs"] = 10
    config["attack"].update(epochs=4, last_k=2)
    config["results"] = str(root / "results")
    config["resources"] = str(root / "resources")
    config["architectures"] = {"tiny": config["architectures"]["tiny"]}
    config["studies"] = {
        "grid": {
            **config["studies"]["grid"],
            "architectures": ["tiny"],
            "attacks": ["type2", "global_loss"],
        }
    }
    return config


def cluster_test_profile(dest: Path, partition: str) -> Path:
    """profiles/slurm adapted to this 2-CPU node without GPUs and to a quick test.

    Kept from the real profile: the executor, squeue status checks, runtimes, the rules' resource
    structure. Changed: partition (and no account), no GPUs, 1 thread and at most 1000 MB per job
    (the GPU rules ask for 8 CPUs and 32 GB on a real cluster), short status-check intervals, and
    connected jobs grouped into one SLURM job each (data, attack): the plugin's status
    checks back off by 10 s per check, so every sequential level of SLURM jobs costs ~30-60 s."""
    profile = load_yaml(REPO / "profiles" / "slurm" / "config.yaml")
    defaults = profile["default-resources"]
    defaults["slurm_partition"] = partition
    defaults.pop("slurm_account")
    defaults["mem_mb"] = 1000
    for res in profile["set-resources"].values():
        for key in ("gpu", "gres", "gpu_model", "cpus_per_gpu"):
            res.pop(key, None)
        res["mem_mb"] = min(res.get("mem_mb", 1000), 1000)
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    profile.update(
        {
            "jobs": 4,
            "local-cores": 1,
            "restart-times": 0,
            "keep-going": False,
            "latency-wait": 5,
            "seconds-between-status-checks": 1,
            "slurm-init-seconds-before-status-checks": 1,
            "slurm-logdir": str(dest.parent / "slurm_logs"),
            "slurm-keep-successful-logs": True,
            "groups": {
                "synthesize": "data",
                "split": "data",
                "fit_attack": "attack",
                "evaluate": "attack",
            },
        }
    )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def _snakemake(*args, workdir: Path, configfile: Path) -> subprocess.Popen:
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--directory", str(workdir), "--configfile", str(configfile), *args]
    with open(workdir / "snakemake.out", "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=snakemake_env())


def _finish(proc: subprocess.Popen, workdir: Path, what: str, timeout: float) -> str:
    proc.wait(timeout=timeout)
    out = (workdir / "snakemake.out").read_text()
    assert proc.returncode == 0, f"{what} snakemake failed ({proc.returncode}):\n{out[-8000:]}"
    return out


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """The same small config through SLURM and locally, side by side (each takes 1-3 min)."""
    tmp = tmp_path_factory.mktemp("slurm")
    cluster_dir, local_dir = tmp / "cluster", tmp / "local"
    cluster_dir.mkdir()
    local_dir.mkdir()
    cluster_cfg = write_config(cluster_dir, small_config(cluster_dir))
    local_cfg = write_config(local_dir, small_config(local_dir))
    profile = cluster_test_profile(cluster_dir / "profile", slurm_cluster)
    # the local reference: what the comparison needs (not the figures), on one core
    targets = [
        str(local_dir / "results" / rel)
        for rel in ("summary/models.csv", "summary/attacks.csv", *COMPARED_FILES)
        if "/attacks/" not in rel  # inside an evaluation group's directory: the tables need it
    ]

    start = time.monotonic()
    procs = []
    try:
        procs.append(
            _snakemake(
                "--workflow-profile", str(profile), workdir=cluster_dir, configfile=cluster_cfg
            )
        )
        procs.append(_snakemake("--cores", "1", *targets, workdir=local_dir, configfile=local_cfg))
        slurm_out = _finish(procs[0], cluster_dir, "SLURM", timeout=900)
        wall = time.monotonic() - start
        _finish(procs[1], local_dir, "local", timeout=900)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()  # Snakemake cancels its SLURM jobs (scancel) on SIGTERM
                proc.wait(timeout=60)
    print(f"\nSLURM run: {wall:.0f} s wall (the local run ran beside it)")
    return {"cluster": cluster_dir, "local": local_dir, "out": slurm_out, "wall": wall}


def submitted_jobs(out: str) -> dict[str, Path]:
    """SLURM job id -> its SLURM log file, from Snakemake's log of the SLURM run."""
    found = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.?$", out, re.M)
    return {job_id: Path(log) for job_id, log in found}


def rules_in(text: str, indent: str = "") -> set[str]:
    """Rules Snakemake announced as run (``rule x:``/``localrule x:``) at the given indent."""
    return set(re.findall(rf"^{indent}(?:local)?rule (\w+):$", text, re.M))


def check_jobs_went_through_sbatch(runs):
    out = runs["out"]
    jobs = submitted_jobs(out)
    print(
        f"{len(jobs)} SLURM jobs (sbatch): "
        + ", ".join(f"{j} {p.parent.name}" for j, p in jobs.items())
    )
    # 4 submissions: data (synthesize + split), 2 x train (each queries its model), attack
    # (fit_attack + evaluate: the learned and the global-loss attack in one job)
    assert len(jobs) == 4, out[-4000:]
    run_id = re.search(r"^SLURM run ID: (\S+)$", out, re.M).group(1)
    jobcomp = JOBCOMP_LOG.read_text()  # SLURM's own record of finished jobs
    ran_in_slurm = set()
    for slurm_id, log in jobs.items():
        record = re.search(rf"^JobId={slurm_id} .*$", jobcomp, re.M)
        assert record, f"SLURM has no record of job {slurm_id}"
        for field in ("JobState=COMPLETED", f"Partition={PARTITION}", f"Name={run_id}"):
            assert field in record.group(0), (field, record.group(0))
        # the job's SLURM log (written by slurmd) shows the rules Snakemake ran inside the job,
        # and that the job ran this environment's Snakemake (sbatch --export=ALL passed PATH on)
        text = log.read_text()
        ran_in_slurm |= rules_in(text, indent=r"\s*")
        assert f"Command: {Path(snakemake.__file__).parent}" in text, text[:2000]
    assert ran_in_slurm == REMOTE_RULES
    # the cheap rules ran on the submitting machine (localrules), nothing else did
    assert rules_in(out) - ran_in_slurm == LOCAL_RULES


def check_results_equal_the_local_run(runs):
    cluster, local = runs["cluster"] / "results", runs["local"] / "results"
    # data and split: byte for byte
    split = Path("ct/splits/s0.csv")
    assert (cluster / split).read_bytes() == (local / split).read_bytes()
    # trained models (CPU training is deterministic), per-sample attack scores, tables
    for rel in COMPARED_FILES:
        a, b = cluster / rel, local / rel
        if rel.endswith(".json"):
            a_json, b_json = (
                {k: v for k, v in json.loads(p.read_text()).items() if "seconds" not in k}
                for p in (a, b)
            )
            assert a_json == b_json, rel
        else:
            assert a.read_bytes() == b.read_bytes(), rel
    for role in ("victim", "shadow"):
        rel = f"ct/models/{role}/tiny/none/n24_s0/model.pt"
        a, b = (torch.load(r / rel, weights_only=True) for r in (cluster, local))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel
    models = [
        pd.read_csv(r / "summary" / "models.csv").drop(columns=TIMING) for r in (cluster, local)
    ]
    pd.testing.assert_frame_equal(*models)
    attacks = [pd.read_csv(r / "summary" / "attacks.csv") for r in (cluster, local)]
    for frame, root in zip(attacks, (cluster, local), strict=True):
        frame["path"] = frame["path"].str.replace(str(root), "<results>", regex=False)
    pd.testing.assert_frame_equal(*attacks)
    assert len(attacks[0]) == 2 and set(attacks[0]["attack"]) == {"type2", "global_loss"}


def test_pipeline_through_slurm_equals_a_local_run(runs):
    # one test (not several sharing the fixture): pytest-xdist must not run the cluster twice
    check_jobs_went_through_sbatch(runs)
    check_results_equal_the_local_run(runs)
