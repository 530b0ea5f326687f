"""Defences: DP-SGD on every architecture, crop, mix-up, min-max, distillation, release."""

import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import snakemake_env, synthetic_ct_job, tiny_spec, train_argv
from segmia.data.split import mia_indices, read_split, train_indices
from segmia.io import read_json
from segmia.models.distill import reference_rows
from segmia.models.losses import PerImageDiceLoss
from segmia.models.private import make_private
from segmia.models.registry import build_model
from segmia.models.train import Arrays, Recipe
from segmia.models.variants import crop_transform, epochs_for, mixup_transform
from test_models import ARCHS, STANDINS


@pytest.mark.parametrize("name", [*ARCHS, *STANDINS])
def test_dp_sgd_trains_every_architecture_one_step(name):
    """Regression test for Opacus' "BackwardHookFunction is a view and is being modified inplace";
    the depth-3 stand-ins also check that no encoder stage is left without a gradient."""
    torch.manual_seed(0)
    model = build_model({**ARCHS, **STANDINS}[name], 3, 1, private=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    optimizer = torch.optim.NAdam(model.parameters(), lr=1e-3)
    spec = {"epsilon": 8.5, "delta": 1e-2, "max_grad_norm": 1.0}
    model, optimizer, _, engine, _ = make_private(
        model, optimizer, 32, Recipe(epochs=1, batch_size=4, lr=1e-3), spec
    )
    before = [p.detach().clone() for p in model.parameters()]
    loss = PerImageDiceLoss()(model(torch.rand(4, 3, 32, 32)), torch.randint(0, 2, (4, 32, 32)))
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad_sample is not None for p in model.parameters() if p.requires_grad)
    assert 0 < engine.get_epsilon(1e-2) < 8.5


def test_resnet_blocks_need_the_out_of_place_fix():
    """Without our fix (BatchNorm replaced only), Opacus fails on torchvision's in-place residual add."""
    from opacus.validators import ModuleValidator

    torch.manual_seed(0)
    model = ModuleValidator.fix(build_model(ARCHS["smp_resnet34"], 1, 1))
    optimizer = torch.optim.NAdam(model.parameters(), lr=1e-3)
    model, optimizer, _, _, _ = make_private(
        model,
        optimizer,
        32,
        Recipe(epochs=1, batch_size=4, lr=1e-3),
        {"epsilon": 8.5, "delta": 1e-2, "max_grad_norm": 1.0},
    )
    with pytest.raises(RuntimeError, match="inplace"):
        PerImageDiceLoss()(
            model(torch.rand(2, 1, 32, 32)), torch.randint(0, 2, (2, 32, 32))
        ).backward()


def test_crop_trains_on_crops_for_more_epochs():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 1, 64, 48), torch.randint(0, 2, (4, 64, 48))
    cx, cy = crop_transform(0.5)(x, y, gen)
    assert cx.shape == (4, 1, 32, 24) and cy.shape == (4, 32, 24)
    # the crop is a window of the batch: find it
    found = [
        (t, c)
        for t in range(33)
        for c in range(25)
        if torch.equal(x[..., t : t + 32, c : c + 24], cx)
    ]
    assert len(found) == 1 and torch.equal(
        y[..., found[0][0] : found[0][0] + 32, found[0][1] : found[0][1] + 24], cy
    )
    assert epochs_for({"type": "crop", "epoch_factor": 3}, 10) == 30
    assert epochs_for({"type": "mixup"}, 10) == 10


def test_mixup_splices_columns_of_two_samples():
    gen = torch.Generator().manual_seed(1)
    x = torch.arange(4).float().view(4, 1, 1, 1).expand(4, 1, 5, 8).clone()
    y = torch.arange(4).view(4, 1, 1).expand(4, 5, 8).clone()
    mx, my = mixup_transform(2.0)(x, y, gen)
    for i in range(4):
        values = mx[i, 0, 0].tolist()
        cut = next((c for c in range(8) if values[c] != values[0]), 8)
        assert values[:cut] == [i] * cut or cut == 0
        assert len(set(values[cut:])) <= 1
        assert torch.equal(my[i].float(), mx[i, 0])  # masks spliced at the same column


def test_minmax_regulariser_updates_and_penalises():
    from segmia.models.minmax import MinMax

    torch.manual_seed(0)
    model = build_model(ARCHS["monai_unet"], 1, 1)
    members = Arrays(
        torch.randint(0, 255, (8, 1, 16, 16), dtype=torch.uint8),
        torch.randint(0, 2, (8, 16, 16), dtype=torch.uint8),
    )
    heldout = Arrays(
        torch.randint(0, 255, (8, 1, 16, 16), dtype=torch.uint8),
        torch.randint(0, 2, (8, 16, 16), dtype=torch.uint8),
    )
    minmax = MinMax(
        {"lambda": 0.5, "attack_batch_size": 4}, members, heldout, 1, None, torch.device("cpu")
    )
    before = [p.detach().clone() for p in minmax.attack.parameters()]
    minmax.on_epoch_start(model, torch.Generator().manual_seed(0))
    assert any(
        not torch.equal(a, b) for a, b in zip(before, minmax.attack.parameters(), strict=True)
    )
    assert "minmax_attack_loss" in minmax.last_epoch
    x, y = members.batch(torch.arange(4), torch.device("cpu"))
    logits = model(x)
    term = minmax.penalty(logits, y)
    assert 0 < float(term.detach()) <= 0.5
    attack_grads = [None if p.grad is None else p.grad.clone() for p in minmax.attack.parameters()]
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # the regulariser trains the segmentation model only; the inner attack is frozen here
    for before_grad, p in zip(attack_grads, minmax.attack.parameters(), strict=True):
        assert (before_grad is None and p.grad is None) or torch.equal(before_grad, p.grad)


def test_distillation_reference_set_holds_no_private_or_mia_sample(tmp_path):
    from segmia.data.split import make_split
    from segmia.data.synthetic import generate

    index = generate(
        "synthetic_ct", dict(groups=30, group_size=4, height=16, width=16, noise=0.3, seed=0)
    )[2]
    sizes = dict(victim_pool=60, shadow_pool=60, train_size=20, val_size=10, mia_size=10)
    split = make_split(index, sizes, 0)
    rows = reference_rows(split, "victim", 20, 1000)
    members, nonmembers = mia_indices(split, "victim", 20, sizes)
    candidates = ((split["pool"] == "victim") & (split["role"] == "train")).sum()
    assert len(rows) == candidates - 20 > 0
    assert not set(rows) & set(train_indices(split, "victim", 20))
    assert not set(rows) & (set(members) | set(nonmembers))
    assert set(split.loc[rows, "pool"]) == {"victim"}


@pytest.mark.slow
def test_distilled_student_trains_only_on_reference_images(tmp_path):
    """Through the CLI: teacher, then student; the student's members.csv is disjoint from the
    teacher's private training set and from the MIA non-members."""
    sizes = dict(victim_pool=60, shadow_pool=60, train_size=20, val_size=10, mia_size=10)
    synthetic_ct_job(tmp_path, sizes, groups=30)
    spec = tiny_spec(train_size=20, split=sizes, epochs=3, batch_size=4, lr=3e-3)
    env = snakemake_env()

    def train(out, spec, *extra):
        data, split = tmp_path / "data", tmp_path / "split.csv"
        cmd = [sys.executable, "-m", "segmia", *train_argv(data, split, spec, out, *extra)]
        subprocess.run(cmd, check=True, env=env, capture_output=True)

    train(tmp_path / "teacher", spec)
    student = {
        **spec,
        "variant_name": "kd",
        "variant": {"type": "distillation", "reference_size": 1000},
    }
    train(tmp_path / "student", student, "--teacher", str(tmp_path / "teacher"))
    split = read_split(tmp_path / "split.csv")
    taught = set(pd.read_csv(tmp_path / "student" / "members.csv")["row"])
    private = set(pd.read_csv(tmp_path / "teacher" / "members.csv")["row"])
    members, nonmembers = mia_indices(split, "victim", 20, sizes)
    assert taught and not taught & private and not taught & set(nonmembers)
    metrics = read_json(tmp_path / "student" / "metrics.json")
    assert metrics["distillation_kept"] == len(taught) <= 20
    assert (
        metrics["train_seconds"] > read_json(tmp_path / "teacher" / "metrics.json")["train_seconds"]
    )


def test_every_defence_is_wired_as_a_release_or_a_training_variant():
    from conftest import REPO
    from segmia.config import load_config_file
    from segmia.plan import all_evaluations, releases, variants

    config = load_config_file(REPO / "config" / "demo.yaml")
    evaluations = all_evaluations(config)["defences_ct"]
    for name, defence in config["defences"].items():
        if defence["type"] in ("argmax", "output_noise"):
            assert name in releases(config)
            assert any(ev.release == name and ev.victim.variant == "none" for ev in evaluations)
        else:
            assert name in variants(config)
            assert any(ev.victim.variant == name and ev.release == "none" for ev in evaluations)
    assert {ev.shadow.variant for ev in evaluations} == {"none"}, (
        "the shadow never copies a defence"
    )
