"""Architecture registry, training determinism and resume after a kill."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import snakemake_env, synthetic_ct_job, tiny_spec, train_argv
from segmia.io import read_torch
from segmia.models.losses import dice_loss
from segmia.models.registry import build_model

ARCHS = {
    "monai_unet": {"family": "monai_unet", "channels": [4, 8], "strides": [2], "norm": "batch"},
    "monai_unet_res": {
        "family": "monai_unet",
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
    },
    "smp_resnet34": {"family": "smp_unet", "encoder": "resnet34"},
    "smp_mobilenet_v2": {"family": "smp_unet", "encoder": "mobilenet_v2"},
    "smp_vgg11": {"family": "smp_unet", "encoder": "vgg11"},
}
#: small stand-ins of the paper's encoders (CPU rehearsals): three stages, a narrow decoder
STANDINS = {
    f"smp_{encoder}_depth3": {
        "family": "smp_unet",
        "encoder": encoder,
        "encoder_depth": 3,
        "decoder_channels": [16, 8, 4],
    }
    for encoder in ("resnet34", "mobilenet_v2", "vgg11")
}


@pytest.mark.parametrize("name", [*ARCHS, *STANDINS])
@pytest.mark.parametrize(("in_channels", "out_channels"), [(1, 1), (3, 5)])
def test_every_architecture_trains_one_step(name, in_channels, out_channels):
    torch.manual_seed(0)
    model = build_model({**ARCHS, **STANDINS}[name], in_channels, out_channels)
    x = torch.rand(2, in_channels, 32, 32)
    y = torch.randint(0, 2 if out_channels == 1 else out_channels, (2, 32, 32))
    loss_fn = dice_loss(2 if out_channels == 1 else out_channels, None)
    optimizer = torch.optim.NAdam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(x)
    assert logits.shape == (2, out_channels, 32, 32)
    loss = loss_fn(logits, y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.fixture
def prepared_ct(tmp_path):
    data, split = synthetic_ct_job(
        tmp_path, dict(victim_pool=20, shadow_pool=20, train_size=12, val_size=4, mia_size=4)
    )
    spec = tiny_spec(epochs=12, optimizer="nadam")
    return data, split, spec


def test_resume_after_kill_gives_the_same_weights(tmp_path, prepared_ct):
    data, split, spec = prepared_ct
    env = snakemake_env()
    subprocess.run(
        [sys.executable, "-m", "segmia", *train_argv(data, split, spec, tmp_path / "full")],
        check=True,
        env=env,
        capture_output=True,
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "segmia", *train_argv(data, split, spec, killed)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    checkpoint = killed / ".checkpoint" / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists() and read_torch(checkpoint)["epoch"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.pt").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "segmia", *train_argv(data, split, spec, killed)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "resuming after epoch" in resumed.stderr
    full, again = read_torch(tmp_path / "full" / "model.pt"), read_torch(killed / "model.pt")
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key
    assert (tmp_path / "full" / "history.csv").read_text().count("\n") == (
        killed / "history.csv"
    ).read_text().count("\n")
    assert not (killed / ".checkpoint").exists()


def test_training_is_deterministic(tmp_path, prepared_ct):
    data, split, spec = prepared_ct
    spec["training"]["epochs"] = 2
    env = snakemake_env()
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "segmia", *train_argv(data, split, spec, tmp_path / name)],
            check=True,
            env=env,
            capture_output=True,
        )
    a, b = read_torch(tmp_path / "a" / "model.pt"), read_torch(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("channels,ignore", [(1, None), (4, None), (4, 255)])
def test_segmentation_scores_equal_monais_dice_and_iou(channels, ignore):
    from monai.metrics import DiceMetric, MeanIoU
    from segmia.models.losses import one_hot_target
    from segmia.models.metrics import SegmentationScores, hard_prediction

    gen = torch.Generator().manual_seed(channels)
    ours = SegmentationScores(ignore)
    dice = DiceMetric(include_background=True, reduction="mean", ignore_empty=True)
    iou = MeanIoU(include_background=True, reduction="mean", ignore_empty=True)
    for _ in range(3):
        logits = torch.randn(5, channels, 12, 12, generator=gen)
        classes = max(channels, 2)
        masks = torch.randint(0, classes, (5, 12, 12), generator=gen)
        masks[0] = 0  # an image whose target has no foreground / only one class
        if ignore is not None:
            masks[1, :4] = ignore
        ours.update(logits, masks)
        pred = hard_prediction(logits)
        target, valid = one_hot_target(masks, channels, ignore)
        dice(pred * valid, target)
        iou(pred * valid, target)
    got = ours.result()
    assert got["dice"] == pytest.approx(float(dice.aggregate().item()), abs=1e-6)
    assert got["iou"] == pytest.approx(float(iou.aggregate().item()), abs=1e-6)
    assert 0 < got["iou"] < got["dice"] < 1
