"""The rehearsal: the paper config's own studies on replica datasets, affordable on a CPU.

The overlay may change only resolution, the architectures' size, epochs and where weights come
from; everything else (studies, datasets, split sizes, training sizes, seeds, defences, attacks,
reference-model counts) is the paper config's. The slow test runs the one-seed rehearsal end to
end (every study type, every table and figure) through the real download, prepare and split.
"""

from __future__ import annotations

import fnmatch

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, load_yaml, planned_jobs, run_snakemake
from segmia import plan
from segmia.config import load_config
from segmia.plan import weight_files
from segmia.rehearsal import OVERLAY, PAPER, merged_config, run

#: what the overlay may set (dotted paths, fnmatch patterns)
AFFORDABLE = (
    "results",
    "resources",
    "threads",
    "training.epochs",
    "attack.classifier",
    "attack.epochs",
    "attack.last_k",
    "datasets.*.prepare.height",
    "studies.*.trigger_size",
    "datasets.*.prepare.width",
    "architectures.*.encoder_depth",
    "architectures.*.decoder_channels",
)


def leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, path + ".")
        else:
            yield path, value


def test_the_overlay_changes_only_what_makes_the_run_affordable():
    overlay = load_yaml(REPO / OVERLAY)
    touched = [path for path, _ in leaves(overlay)]
    assert touched
    for path in touched:
        assert any(fnmatch.fnmatchcase(path, p) for p in AFFORDABLE), path
    paper, rehearsal = load_yaml(REPO / PAPER), merged_config(REPO)
    for key in ("defences", "seeds"):
        assert rehearsal[key] == paper[key]
    for name, study in paper["studies"].items():  # pixel sizes scale with the image
        assert {k: v for k, v in rehearsal["studies"][name].items() if k != "trigger_size"} == {
            k: v for k, v in study.items() if k != "trigger_size"
        }
    assert set(rehearsal["studies"]) == set(paper["studies"])
    for name, ds in paper["datasets"].items():
        assert rehearsal["datasets"][name]["split"] == ds["split"]
        assert rehearsal["datasets"][name]["source"] == ds["source"]
        for key, value in ds.get("prepare", {}).items():  # e.g. the original data quirks
            assert rehearsal["datasets"][name]["prepare"][key] == value
    for name, arch in paper["architectures"].items():
        assert {k: rehearsal["architectures"][name][k] for k in arch} == arch
    assert set(rehearsal["architectures"]) == set(paper["architectures"])
    load_config(rehearsal)  # a valid config


def dry_run(tmp_path, *configfiles) -> dict[str, int]:
    proc = run_snakemake(
        "-n",
        "--cores",
        "2",
        "--configfile",
        *map(str, configfiles),
        "--config",
        "seeds=[0]",
        workdir=tmp_path,
    )
    return planned_jobs(proc)


def test_the_rehearsal_plans_exactly_the_paper_configs_jobs(tmp_path):
    paper = dry_run(tmp_path / "paper", REPO / PAPER)
    rehearsal = dry_run(tmp_path / "rehearsal", REPO / PAPER, REPO / OVERLAY)
    # the small attack classifier needs no ImageNet weights: the weight files it leaves out are
    # the only difference (the min-max inner ResNet-34 still fetches the attack's file)
    left_out = set(weight_files(load_config(load_yaml(REPO / PAPER)))) - set(
        weight_files(load_config(merged_config(REPO)))
    )
    assert paper.pop("fetch_weights") == rehearsal.pop("fetch_weights") + len(left_out)
    assert rehearsal == paper
    assert paper["train"] > 50


@pytest.mark.slow
def test_one_seed_rehearsal_runs_every_study_of_the_paper_config(tmp_path):
    planned = dry_run(tmp_path / "plan", REPO / PAPER, REPO / OVERLAY)
    status = run(REPO, seeds=[0], cores="2", workdir=tmp_path / "run", port=0)
    assert status == 0
    config = load_config(merged_config(REPO) | {"seeds": [0]})
    root, resources = tmp_path / "run" / config["results"], tmp_path / "run" / config["resources"]
    # every planned job ran once (each writes a benchmark file; rule all does not)
    ran = {
        rule: len(list((root / "benchmarks" / rule).rglob("*.tsv")))
        for rule in ("download", "fetch_weights", "prepare", "split", "train", "query")
        + ("fit_attack", "evaluate", "reference_attacks", "backdoor")
    }
    assert ran == {rule: planned[rule] for rule in ran}
    assert len(list((root / "benchmarks").rglob("*.tsv"))) == sum(planned.values()) - 1
    # the real structure: 5000 liver slices from (nearly) every patient; Cityscapes split by city
    liver = pd.read_csv(resources / "prepared" / "liver" / "index.csv")
    assert len(liver) == 5000 and liver["group"].nunique() >= 120
    masks = np.load(resources / "prepared" / "liver" / "masks.npy", mmap_mode="r")
    assert (masks.reshape(len(masks), -1).max(1) > 0).all()  # no empty liver mask
    split = pd.read_csv(root / "cityscapes" / "splits" / "s0.csv")
    cities = {p: set(split.loc[split["pool"] == p, "group"]) for p in ("victim", "shadow")}
    assert not cities["victim"] & cities["shadow"]
    for pool, rows in split[split["pool"] != "unused"].groupby("pool"):
        assert (rows["role"] == "train").sum() >= 600
        nonmembers = set(rows.loc[rows["role"] == "nonmember", "group"])
        assert nonmembers <= cities[pool] and len(nonmembers) > 1
    # every table and figure of every study
    report = (root / "REPRODUCTION.md").read_text()
    for name in config["studies"]:
        assert name in report
        for stem in plan.study_tables(config, name):
            assert len(pd.read_csv(root / f"{stem}.csv")), stem
        for figure in plan.study_figures(config, name):
            assert (root / figure).stat().st_size > 10_000, figure
    attacks = pd.read_csv(root / "summary" / "attacks.csv")
    assert set(attacks["study"]) == set(config["studies"])
    assert attacks["auc"].between(0, 1).all()
    assert len(pd.read_csv(root / "summary" / "models.csv")) == planned["train"]
