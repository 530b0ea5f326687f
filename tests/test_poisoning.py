"""Poisoning: trigger placement, realised rate, p = 0 equals clean, the shadow stays clean."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, snakemake_env, synthetic_ct_job
from segmia.io import read_torch
from segmia.models.variants import PoisonTransform, apply_trigger, poison_target, trigger_region
from test_models import ARCHS


@pytest.mark.parametrize(
    ("trigger", "size", "rows", "cols"),
    [("square", 3, range(5, 8), range(9, 12)), ("line", 2, range(6, 8), range(0, 12))],
)
def test_trigger_lands_exactly_where_configured(trigger, size, rows, cols):
    x = torch.zeros(2, 3, 8, 12)
    out = apply_trigger(x, trigger, size, 200)
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[rows.start : rows.stop, cols.start : cols.stop] = True
    for image in out:
        for channel in image:
            assert torch.equal(channel != 0, expected)
            assert torch.allclose(channel[expected], torch.tensor(200 / 255.0))
    assert trigger_region((8, 12), trigger, size) == (
        slice(rows.start, rows.stop),
        slice(cols.start, cols.stop),
    )
    assert torch.equal(x, torch.zeros_like(x)), "the batch itself is not modified"


def test_poisoned_target_masks():
    like = torch.ones(2, 4, 4, dtype=torch.long)
    assert poison_target(like, "empty").sum() == 0
    almost = poison_target(like, "almost_empty")
    assert almost.sum() == 2 and almost[:, 0, 0].tolist() == [1, 1]


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_realised_rate_matches_p_within_sampling_error(rate):
    poison = PoisonTransform(rate, "square", 2, 255, "almost_empty")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 2, (8, 8, 8))
    hits = 0
    for _ in range(500):  # 4000 sample loads
        px, py = poison(x, y, gen)
        poisoned = (px[:, 0, -1, -1] == 1.0) & (py.flatten(1).sum(1) == 1) & (py[:, 0, 0] == 1)
        hits += int(poisoned.sum())
    n = poison.seen
    assert n == 4000 and poison.poisoned == hits
    sd = (rate * (1 - rate) / n) ** 0.5
    assert abs(hits / n - rate) < 4 * sd


def _train(tmp_path, name, variant, data, split):
    spec = {
        "dataset": "ct",
        "role": "victim",
        "pool": "victim",
        "arch_name": "tiny",
        "arch": ARCHS["monai_unet"],
        "variant_name": name,
        "variant": variant,
        "train_size": 12,
        "seed": 0,
        "training": {"epochs": 2, "batch_size": 4, "lr": 1e-3},
    }
    cmd = [
        sys.executable,
        "-m",
        "segmia",
        "train",
        "--data",
        str(data),
        "--split",
        str(split),
        "--spec",
        json.dumps(spec),
        "--out",
        str(tmp_path / name),
        "--device",
        "cpu",
    ]
    subprocess.run(cmd, check=True, env=snakemake_env(), capture_output=True)
    return read_torch(tmp_path / name / "model.pt")


def test_rate_zero_gives_the_clean_model_and_a_positive_rate_does_not(tmp_path):
    synthetic_ct_job(
        tmp_path, dict(victim_pool=20, shadow_pool=20, train_size=12, val_size=4, mia_size=4)
    )
    poison = {
        "type": "poison",
        "trigger": "square",
        "size": 4,
        "value": 255,
        "target": "almost_empty",
    }
    clean = _train(tmp_path, "none", {"type": "none"}, tmp_path / "data", tmp_path / "split.csv")
    zero = _train(
        tmp_path, "p0", {**poison, "rate": 0.0}, tmp_path / "data", tmp_path / "split.csv"
    )
    half = _train(
        tmp_path, "p05", {**poison, "rate": 0.5}, tmp_path / "data", tmp_path / "split.csv"
    )
    assert all(torch.equal(clean[k], zero[k]) for k in clean)
    assert any(not torch.equal(clean[k], half[k]) for k in clean)


def test_poisoned_samples_never_reach_the_shadow():
    from segmia.config import load_config_file
    from segmia.plan import all_evaluations, model_spec

    config = load_config_file(REPO / "config" / "demo.yaml")
    for study, evaluations in all_evaluations(config).items():
        if config["studies"][study]["type"] != "poisoning":
            continue
        assert {ev.victim.variant for ev in evaluations} > {"none"}
        for ev in evaluations:
            assert ev.shadow.variant == "none"
            assert model_spec(config, ev.shadow)["variant"] == {"type": "none"}
            assert ev.release == "none", "attacks query clean images"
