"""Training counts (this pipeline vs the original code) and the device-hours estimate."""

from __future__ import annotations

import csv
import re

import pytest
from conftest import REPO, run_segmia, run_snakemake, write_config
from segmia import plan
from segmia.config import load_config_file
from segmia.cost import (
    FIELDS,
    arch_key,
    count_trainings,
    dataset_shape,
    estimate,
    read_throughput,
)
from segmia.errors import SegmiaError


@pytest.fixture(scope="module")
def demo():
    return load_config_file(REPO / "config" / "demo.yaml")


def test_demo_trainings_match_the_dag_and_the_original_cells(demo):
    rows = {r.study: r for r in count_trainings(demo)}
    # architectures: 2 victims x 2 shadows x 3 attacks = 12 cells of 2 models; 2 + 2 models
    a = rows["architectures_ct"]
    assert (a.cells, a.original, a.models) == (12, 24, 4)
    # defences: 8 rows x 2 attacks, 2 models per cell + the kd teacher in 2 cells; victims
    # none/crop/mixup/minmax/dp/kd + the shadow (the kd teacher is the undefended victim); the
    # undefended pair is already trained for the grid
    d = rows["defences_ct"]
    assert (d.cells, d.original, d.models, d.new_models) == (16, 34, 7, 5)
    # dp sweep: none + 3 epsilons (8.5 is the dp defence itself) x 2 attacks
    assert (rows["dp_sweep_ct"].cells, rows["dp_sweep_ct"].new_models) == (8, 2)
    # attack comparison: K reference models per LiRA/RMIA cell, trained once here
    study = demo["studies"]["attack_comparison_ct"]
    k, n_ref = study["reference_models"], sum(a in plan.REFERENCE_ATTACKS for a in study["attacks"])
    c = rows["attack_comparison_ct"]
    # victims, the shadow, K references per victim (none, dp: each trains its own, as its victim)
    assert c.models == len(study["defences"]) + 1 + k * len(study["defences"])
    assert c.original == 2 * c.cells + (k - 1) * n_ref * len(study["defences"])
    total = sum(r.new_models for r in rows.values())
    # + the protocol ablation: byte-input victim and shadow per seed (2), seed 1's unit pair
    # + the poisoning studies' own dataset: clean victim, shadow, 4 per_load and 2 fixed_subset
    assert total == len(plan.all_models(demo)) == 41  # what `snakemake -n` schedules
    # poisoning_ct: 5 victims x 2 attacks with clean queries, 6 victim-trigger pairs x 2 attacks
    # with triggered ones
    assert rows["poisoning_ct"].cells == 10 + 12
    assert sum(r.original for r in rows.values()) == 347  # attack_comparison_ct: K = 4


def test_paper_config_counts():
    config = load_config_file(REPO / "config" / "config.yaml")
    rows = {r.study: r for r in count_trainings(config)}
    seeds = len(config["seeds"])
    # tables 1-3: 3 x 3 architectures x 3 attacks per seed; 3 victims + 3 shadows per seed
    grid = rows["table1_3_liver"]
    assert (grid.cells, grid.original, grid.new_models) == (27 * seeds, 54 * seeds, 6 * seeds)
    assert sum(r.new_models for r in rows.values()) == len(plan.all_models(config))


def _csv(path, rows):
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS, extrasaction="raise")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    "pipeline": 1,
                    "device": "cpu",
                    "device_name": "test",
                    "threads": 1,
                    "torch": "x",
                    "date": "2000-01-01",
                    **row,
                }
            )


def _rates(demo):
    rows = []
    for name, arch in demo["architectures"].items():
        key = arch_key(arch)
        for group, rate in (("train", 10.0), ("dp_train", 5.0), ("extract", 100.0)):
            rows.append(
                {
                    "group": group,
                    "arch": name,
                    "arch_key": key,
                    "in_channels": 1,
                    "height": 64,
                    "width": 64,
                    "out_channels": 1,
                    "batch_size": 8,
                    "setting": "hooks" if group == "dp_train" else "fp32",
                    "images_per_s": rate,
                }
            )
    for group, rate in (("attack_train", 50.0), ("attack_score", 200.0)):
        rows.append(
            {
                "group": group,
                "arch": "small_cnn",
                "arch_key": "small_cnn",
                "in_channels": 1,
                "height": 64,
                "width": 64,
                "batch_size": 16,
                "setting": "type1",
                "images_per_s": rate,
            }
        )
    return rows


def test_estimate_by_hand(tmp_path, demo):
    _csv(tmp_path / "t.csv", _rates(demo))
    config = {**demo, "studies": {"architectures_ct": demo["studies"]["architectures_ct"]}}
    (study,), look = estimate(config, read_throughput(tmp_path / "t.csv"))
    ds = demo["datasets"]["synthetic_ct"]["split"]
    epochs, n, val, k = demo["training"]["epochs"], ds["train_size"], ds["val_size"], ds["mia_size"]
    assert dataset_shape(demo, "synthetic_ct") == (1, 64, 64, 1)
    # queries 2k / 100 each
    # 4 models: epochs x (n / 10 + val / 30: validation is a forward pass, a third of a step)
    assert study["train"] == pytest.approx(4 * epochs * (n / 10 + val / 30))
    assert study["query"] == pytest.approx(4 * 2 * k / 100)
    attack = demo["attack"]
    # 2 attack kinds x 2 shadows fitted; type2 has 2 channels (scaled from the 1-channel row: same)
    fits = 4 * (attack["epochs"] * 2 * k / 50 + 2 * k / 200)
    assert study["attack_fit"] == pytest.approx(fits)
    evals = 2 * 4 * (1 + attack["last_k"]) * 2 * k / 200  # 2 learned attacks x 4 pairs
    assert study["attack_eval"] == pytest.approx(evals)
    # only the Type-II inputs (2 channels) come from the 1-channel rows
    assert look.scaled == {
        "attack_train small_cnn 2x64x64 from 1x64x64",
        "attack_score small_cnn 2x64x64 from 1x64x64",
    }


def test_estimate_adds_each_planned_jobs_start_up(tmp_path, demo):
    per_job = {
        "train": 2.0,
        "query": 1.0,
        "fit_attack": 3.0,
        "eval_attack": 0.5,
        "threshold_attack": 0.25,
        "table": 0.1,
    }
    startup = [{"group": "startup", "setting": k, "startup_s": v} for k, v in per_job.items()]
    _csv(tmp_path / "t.csv", _rates(demo) + startup)
    config = {**demo, "studies": {"architectures_ct": demo["studies"]["architectures_ct"]}}
    (study,), look = estimate(config, read_throughput(tmp_path / "t.csv"))
    # 4 models (each trained and queried in one job), 4 fitted attacks (2 kinds x 2 shadows),
    # 4 evaluation groups (one per victim-shadow pair: type1, type2 and global loss in one job,
    # which builds the attack classifier), 3 tables + 2 figures
    assert study["startup"] == pytest.approx(4 * 2.0 + 4 * 3.0 + 4 * 0.5 + 5 * 0.1)
    assert study["jobs"] == 4 + 4 + 4 + 5
    assert not look.missing
    # without startup rows the stage is reported as not measured
    _, look = estimate(
        config,
        read_throughput(tmp_path / "t.csv").__class__(
            r for r in read_throughput(tmp_path / "t.csv") if r["group"] != "startup"
        ),
    )
    assert look.missing == {"startup"}


def _estimate_demo(throughput, *options: str) -> str:
    """`segmia estimate` of the demo config from a benchmark CSV: its output."""
    config = str(REPO / "config" / "demo.yaml")
    return run_segmia(
        "estimate", "--configfile", config, "--throughput", str(throughput), *options
    ).stdout


def test_estimate_without_attack_rows_says_what_is_not_measured(tmp_path, demo):
    rows = [r for r in _rates(demo) if not r["group"].startswith("attack")]
    _csv(tmp_path / "t.csv", rows)
    out = _estimate_demo(tmp_path / "t.csv")
    assert "NOT MEASURED" in out and "attack_train small_cnn" in out and "n/a" in out


def test_estimate_cli_and_missing_rows(tmp_path, demo):
    _csv(tmp_path / "t.csv", _rates(demo))
    out = _estimate_demo(tmp_path / "t.csv", "--speedup", "50")
    assert "THESE ARE CPU NUMBERS" in out and "GPU-h (extrapolated)" in out
    assert "segmentation trainings: 41" in out and "347" in out
    # synthetic_scenes rows are missing: scaled from the 64x64 rows by pixel count
    assert "scaled by pixel count" in out
    rows = [r for r in _rates(demo) if r["group"] != "dp_train"]
    _csv(tmp_path / "nodp.csv", rows)
    with pytest.raises(SegmiaError, match="no row for dp_train"):
        estimate(demo, read_throughput(tmp_path / "nodp.csv"))


def test_trainings_cli():
    out = run_segmia("trainings", "--configfile", str(REPO / "config" / "demo.yaml")).stdout
    assert "41 trainings instead of 347" in out


def test_the_dag_trains_each_model_once(tmp_path, demo):
    """`snakemake -n` on the demo schedules exactly the counted trainings (33, not 327)."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["results"], config["resources"] = str(tmp_path / "r"), str(tmp_path / "res")
    proc = run_snakemake(
        "-n", "--cores", "1", workdir=tmp_path, configfile=write_config(tmp_path, config)
    )
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.M))
    assert int(jobs["train"]) == sum(r.new_models for r in count_trainings(demo)) == 41


def test_default_throughput_prefers_the_newest_gpu_csv(tmp_path):
    from segmia.cost import default_throughput

    folder = tmp_path / "benchmarks" / "results"
    folder.mkdir(parents=True)
    for name in ("cpu-2026-01-02.csv", "cpu-2026-03-01.csv", "extract-2threads-cpu-2026-04.csv"):
        (folder / name).write_text("x")
    assert default_throughput([tmp_path]).name == "cpu-2026-03-01.csv"
    (folder / "cuda-2025-12-31.csv").write_text("x")
    assert default_throughput([tmp_path]).name == "cuda-2025-12-31.csv"
    with pytest.raises(SegmiaError, match="no benchmark CSV"):
        default_throughput([tmp_path / "elsewhere"])
