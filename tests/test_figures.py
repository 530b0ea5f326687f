"""Every figure and table the plan can request is accepted by ``segmia`` and drawn (written).

A config with one study of every type (config/demo.yaml plus a training_sizes study) is planned;
for each study its evaluations, victims and backdoor results are fabricated as the jobs would
write them (small random scores), then ``segmia figure`` / ``segmia table`` run on them.
"""

from __future__ import annotations

import copy
import json
import shlex

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, load_yaml, run_snakemake, write_config
from segmia import cli, plan, protocol
from segmia.attacks.metrics import null_halves
from segmia.config import load_config

SEEDS = [0, 1]


@pytest.fixture(scope="module")
def every_study() -> dict:
    raw = load_yaml(REPO / "config" / "demo.yaml")
    raw["seeds"] = SEEDS
    raw["studies"]["training_sizes_scenes"] = {
        "type": "training_sizes",
        "dataset": "synthetic_scenes",
        "architecture": "unet_small",
        "sizes": [16, 32, 64],
        "paper": "cityscapes_training_size",  # the author's logged accuracy drawn beside
    }
    config = load_config(raw)
    assert {s["type"] for s in config["studies"].values()} == set(plan.STUDY_FIGURES)
    return config


def _requests(config: dict):
    """(study, 'figure' | 'table', kind) of every figure and table the plan asks for."""
    for name in config["studies"]:
        for path in plan.study_figures(config, name):
            yield name, "figure", path.removesuffix(".png").rsplit("/", 1)[1]
        for stem in plan.study_tables(config, name):
            yield name, "table", stem.rsplit("/", 1)[1]


def _argv(what: str, kind: str, name: str, out: str, study: dict, files: dict) -> list[str]:
    argv = [what, kind] if what == "figure" else [what, "--table", kind]
    argv += ["--study", name, "--out", out, "--study-json", json.dumps(study)]
    argv += ["--evaluations", *files["evaluations"], "--models", *files["models"]]
    if files.get("backdoors"):
        argv += ["--backdoors", *files["backdoors"]]
    return argv


def test_the_cli_accepts_every_figure_and_table_the_plan_requests(every_study):
    requests = list(_requests(every_study))
    kinds = {kind for _, what, kind in requests if what == "figure"}
    assert kinds == set(plan.FIGURES) and "training_size" in kinds
    files = {"evaluations": ["e/metrics.json"], "models": ["m/metrics.json"]}
    for name, what, kind in requests:
        args = cli.parser().parse_args(_argv(what, kind, name, "out", {}, files))
        assert args.study == name and (args.kind if what == "figure" else args.table) == kind


def _fabricate(config: dict, name: str, root) -> dict:
    """The metrics files of a study's evaluations, victims and backdoors, as the jobs write them."""
    rng = np.random.default_rng(len(name))
    files = {"evaluations": [], "models": [], "backdoors": []}
    for ev in plan.study_evaluations(config, name):
        out = root / ev.path()
        out.mkdir(parents=True, exist_ok=True)
        member = np.r_[np.ones(8, int), np.zeros(8, int)]
        score = rng.normal(size=16) + member
        group = np.repeat(np.arange(8), 2)  # patients of two images each
        null_half = pd.array([pd.NA] * 8 + list(null_halves(group[8:], 0)), dtype="Int64")
        pd.DataFrame(
            {
                "sample_id": [f"s{i}" for i in range(16)],
                "member": member,
                "score": score,
                "group": group,
                "null_half": null_half,
            }
        ).to_csv(out / "scores.csv", index=False)
        auc = float(rng.uniform(0.5, 0.9))
        null = float(rng.uniform(0.2, 0.8))
        spec = plan.evaluation_spec(config, ev)  # what the job receives: names, switches
        metrics = {
            "dataset": ev.dataset,
            "attack": spec["attack"],
            "release_name": spec["release_name"],
            "seed": ev.seed,
            "train_size": ev.size,
            "victim_arch": ev.victim.arch,
            "victim_variant": spec["victim"]["variant"],
            "shadow_arch": ev.shadow.arch,
            "shadow_variant": spec["shadow"]["variant"],
            **{**protocol.SEGMIA, **spec["protocol"]},
            "auc": auc,
            "tpr_at_1pct_fpr": auc / 10,
            "tpr_at_0.1pct_fpr": auc / 20,
            "accuracy": auc,
            "f1": auc,
            "balanced_accuracy": auc,
            "auc_ci_low": auc - 0.1,
            "auc_ci_high": min(auc + 0.1, 1.0),
            "n_members": 8,
            "n_nonmembers": 8,
            "ci_unit": "group",
            "ci_groups": 8,
            "null_auc": null,
            "null_auc_ci_low": null - 0.25,
            "null_auc_ci_high": null + 0.25,
            "null_excludes_chance": abs(null - 0.5) > 0.25,
        }
        (out / "metrics.json").write_text(json.dumps(metrics))
        files["evaluations"].append(str(out / "metrics.json"))
    for model in plan.study_victims(config, name):
        out = root / model.path()
        out.mkdir(parents=True, exist_ok=True)
        spec = plan.variant_spec(config, model.variant)
        metrics = {
            "dataset": model.dataset,
            "role": model.role,
            "arch": model.arch,
            "variant": protocol.split_variant(model.variant)[0],
            "variant_spec": spec,
            "train_size": model.size,
            "seed": model.seed,
            "val_dice": float(rng.uniform(0.6, 0.9)),
            "val_iou": 0.5,
            "train_loss": 0.2,
            "val_loss": 0.3,
            "train_seconds": float(rng.uniform(5, 10)),
        }
        if spec["type"] == "dp":
            metrics.update(target_epsilon=spec["epsilon"], epsilon=spec["epsilon"])
        (out / "metrics.json").write_text(json.dumps(metrics))
        members = pd.DataFrame({"row": range(8), "sample_id": [f"s{i}" for i in range(8)]})
        if spec.get("schedule") == "fixed_subset":  # the first round(p x 8) members poisoned
            members["poisoned"] = (np.arange(8) < round(spec["rate"] * 8)).astype(int)
        members.to_csv(out / "members.csv", index=False)
        files["models"].append(str(out / "metrics.json"))
    variants = plan.variants(config)
    for path in plan.study_backdoors(config, name):
        out = root / path
        out.parent.mkdir(parents=True, exist_ok=True)
        variant = path.split("/models/victim/")[1].split("/")[1]
        trigger = out.name.split("_k")[0]
        result = {
            "trigger": trigger,
            "variant": variant,
            "rate": variants[variant].get("rate", 0.0),
            "clean_dice": 0.8,
            "clean_iou": 0.7,
            "backdoor_success": float(rng.uniform()),
            "target_agreement": 0.9,
            "foreground_ratio": 0.5,
        }
        out.write_text(json.dumps(result))
        files["backdoors"].append(str(out))
    return files


def test_every_figure_kind_is_drawn_and_every_table_written(every_study, tmp_path):
    drawn = set()
    for name, what, kind in _requests(every_study):
        files = _fabricate(every_study, name, tmp_path / "results")
        out = tmp_path / "out" / name / kind
        argv = _argv(what, kind, name, str(out), plan.study_spec(every_study, name), files)
        if what == "figure":
            argv += ["--dpi", "40", "--min-fpr", "1e-3"]
            out = out.with_suffix(".png")
            argv[argv.index("--out") + 1] = str(out)
        assert cli.main(["-q", *argv]) == 0, (name, what, kind)
        if what == "figure":
            assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 2000
            drawn.add(kind)
        else:
            for ext in ("csv", "md", "tex"):
                assert out.with_suffix(f".{ext}").stat().st_size > 0, (name, kind, ext)
            text = out.with_suffix(".md").read_text()
            # every table shows each attack's null control, and explains it
            assert ("null AUC" in text or "Null-control AUC" in text) and "†" in text, (name, kind)
            if kind == "attacks":  # 8 non-members resolve no FPR below 1/8: n/a, not a number
                assert "n/a" in text and "smallest resolvable FPR is 1/8" in text
                # each seed's own interval, never the seeds' intervals averaged
                assert "s0 [" in text and "s1 [" in text and "averaged" not in text
    assert drawn == set(plan.FIGURES)


def test_every_rules_command_parses(tmp_path):
    """Every command the rules run for the demo plus a training-size study (snakemake -n -p, the
    default target: all) is accepted by the parser, with every figure kind among them."""
    raw = copy.deepcopy(load_yaml(REPO / "config" / "demo.yaml"))
    raw["studies"]["training_sizes_scenes"] = {
        "type": "training_sizes",
        "dataset": "synthetic_scenes",
        "architecture": "unet_small",
        "sizes": [16, 32, 64],
    }
    raw["results"] = str(tmp_path / "results")
    raw["resources"] = str(tmp_path / "resources")
    config = load_config(raw)
    proc = run_snakemake(
        "-n", "-p", "--cores", "1", workdir=tmp_path, configfile=write_config(tmp_path, raw)
    )
    prefix = "Shell command: python -m segmia "
    commands = [
        line.strip().removeprefix(prefix)
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip().startswith(prefix)
    ]
    steps, kinds = set(), set()
    for command in commands:
        argv = shlex.split(command.split(" 2> ")[0])
        args = cli.parser().parse_args(argv)
        steps.add(argv[0])
        kinds.add(getattr(args, "kind", None))
        if argv[0] == "summary-models":  # one studies entry per model file
            assert len(args.studies) == len(args.inputs) > 0, command
    tables = sum(len(plan.study_tables(config, name)) for name in config["studies"])
    assert sum(c.startswith("table ") for c in commands) == tables
    assert kinds - {None} == set(plan.FIGURES)
    assert {"train", "query", "fit-attack", "evaluate"} <= steps
    assert {
        "reference-attacks",
        "backdoor",
        "summary-models",
        "summary-attacks",
        "study-summary",
    } <= steps


def test_the_cli_parser_imports_no_heavy_module():
    """The choices come from segmia.plan, segmia.config and the name modules: no torch, numpy or
    pandas before a step runs."""
    import subprocess
    import sys

    code = (
        "import sys, segmia.cli; segmia.cli.parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'pandas'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
