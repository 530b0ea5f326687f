"""The Snakemake profiles parse into the options they are meant to set (fast; no cluster)."""

import pytest
from conftest import REPO, load_yaml
from snakemake.cli import parse_args

GPU_RULES = ("train", "query", "fit_attack", "evaluate")


def rules_of_the_workflow() -> set[str]:
    import re

    text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"^rule (\w+):", text, re.M))


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_default_profile_is_picked_up_for_local_runs(in_repo):
    _, args = parse_args(["--snakefile", str(REPO / "Snakefile"), "-n"])
    assert {k: v.value for k, v in args.resources.items()} == {"gpu": 1}
    assert args.retries == 0 and args.rerun_incomplete and args.printshellcmds
    assert args.executor is None  # local


def test_slurm_profile(in_repo):
    _, args = parse_args(["--workflow-profile", "profiles/slurm"])
    assert args.executor == "slurm" and args.jobs >= 10
    assert args.resources == {}  # it replaces profiles/default: no GPU job limit on a cluster
    # polling that works without an accounting database (the default, sacct, hangs there)
    assert args.slurm_status_command == "squeue"
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= set(args.default_resources)
    assert set(args.set_resources) <= rules_of_the_workflow()
    profile = load_yaml(REPO / "profiles" / "slurm" / "config.yaml")
    for rule in GPU_RULES:
        res = profile["set-resources"][rule]
        assert res["gpu"] == 1 and res["cpus_per_gpu"] >= 1, rule
        assert res["runtime"] > 0 and res["mem_mb"] > 0, rule
        assert profile["set-threads"][rule] == res["cpus_per_gpu"], rule


def test_gpu_workstation_profile(in_repo):
    _, args = parse_args(["--workflow-profile", "profiles/gpu-workstation"])
    assert args.executor is None
    assert args.resources["gpu"].value > 1
    assert args.retries == 0 and args.rerun_incomplete


def test_report_rules_run_on_the_submitting_machine():
    snakefile = (REPO / "Snakefile").read_text()
    local = snakefile.split("localrules:")[1].split("\n\n")[0]
    for rule in ("all", "table", "figure", "study_summary", "summary_attacks", "summary_models"):
        assert f"    {rule}," in local
