"""Opacus grad-sample modes agree: hooks, functorch and ghost clipping give the same per-sample
gradient norms and the same clipped DP-SGD update on the pipeline's (Opacus-compatible) models.

The reference is plain autograd, one sample at a time. Tiny models and batches: the smp U-Net
keeps its ResNet encoder (the out-of-place residual blocks of ``make_private_compatible``) with a
narrow decoder at 32x32.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from segmia.models.losses import PerImageDiceLoss
from segmia.models.private import GRAD_SAMPLE_MODES, make_private
from segmia.models.registry import build_model, make_private_compatible
from segmia.models.train import Arrays, Extras, Recipe, Task, fit


def _monai():
    arch = {"family": "monai_unet", "channels": [4, 8], "strides": [2], "num_res_units": 1}
    return build_model(arch, 1, 1, private=True), 1, 1, 16


def _smp():
    import segmentation_models_pytorch as smp

    net = smp.Unet(
        "resnet18",
        encoder_weights=None,
        in_channels=3,
        classes=3,
        decoder_channels=(16, 16, 8, 8, 4),
    )
    return make_private_compatible(net), 3, 3, 32


MODELS = {"monai_unet_res": _monai, "smp_unet_resnet18": _smp}


def _batch(in_channels, classes, size, n=3):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, in_channels, size, size, generator=gen)
    y = torch.randint(0, 2 if classes == 1 else classes, (n, size, size), generator=gen)
    return x, y


def _reference(model, x, y):
    """Per-sample gradients by plain autograd, one sample at a time, in float64 (float32 CPU
    convolution backward is off by ~1e-3 relative here; Opacus' per-sample sums are closer)."""
    loss_fn = PerImageDiceLoss()
    model, x = model.double(), x.double()
    grads = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append([p.grad.detach().float() for p in model.parameters()])
    norms = torch.stack([torch.cat([g.flatten() for g in gs]).double().norm() for gs in grads])
    return grads, norms.float()


def _private_step(model, x, y, mode, max_grad_norm):
    """One DP-SGD step (no noise, SGD lr 1) in ``mode``: (per-sample norms, parameter update)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    loss_fn = PerImageDiceLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(torch.arange(len(x))), batch_size=len(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=0.0,
            max_grad_norm=max_grad_norm,
            grad_sample_mode=mode,
            criterion=loss_fn,
            poisson_sampling=False,
        )
    gsm, optimizer = made[0], made[1]
    if mode == "ghost":
        loss_fn = made[2]
    before = [p.detach().clone() for p in gsm.parameters()]
    optimizer.zero_grad(set_to_none=True)
    loss_fn(gsm(x), y).backward()
    if mode == "ghost":
        norms = gsm.per_sample_gradient_norms.detach().clone()
    else:
        norms = torch.stack(
            [p.grad_sample.reshape(len(x), -1).norm(dim=1) for p in gsm.parameters()]
        ).norm(dim=0)
    optimizer.step()
    update = [b - p.detach() for b, p in zip(before, gsm.parameters(), strict=True)]
    return norms, update


@pytest.mark.parametrize("name", list(MODELS))
def test_grad_sample_modes_agree(name):
    torch.manual_seed(0)
    model, in_channels, classes, size = MODELS[name]()
    x, y = _batch(in_channels, classes, size)
    grads, ref_norms = _reference(copy.deepcopy(model), x, y)
    # clip at the median norm: one sample clipped, one not, one at the bound
    bound = float(ref_norms.median())
    coef = (bound / (ref_norms + 1e-6)).clamp(max=1.0)
    ref_update = [
        sum(c * g[j] for c, g in zip(coef, grads, strict=True)) / len(x)
        for j in range(len(grads[0]))
    ]
    for mode in GRAD_SAMPLE_MODES:
        norms, update = _private_step(copy.deepcopy(model), x, y, mode, bound)
        torch.testing.assert_close(norms, ref_norms, rtol=1e-4, atol=1e-6, msg=mode)
        for got, want in zip(update, ref_update, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6, msg=mode)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_fit_trains_privately_in_every_mode(tmp_path, mode):
    """The pipeline's DP-SGD loop (make_private + fit) in each mode, with its accounting."""
    torch.manual_seed(0)
    arch = {"family": "monai_unet", "channels": [4, 8], "strides": [2]}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 1, 16, 16), dtype=np.uint8)
    masks = (images[:, 0] > 128).astype(np.uint8)
    device = torch.device("cpu")
    train = Arrays.from_numpy(images, masks, np.arange(16), device)
    val = Arrays.from_numpy(images, masks, np.arange(16, 20), device)
    private = {
        "epsilon": 8.0,
        "delta": 1e-3,
        "max_grad_norm": 1.0,
        "lr": 1e-2,
        "grad_sample_mode": mode,
        "accountant": "rdp",
    }
    model, rows, info = fit(
        build_model(arch, 1, 1, private=True),
        train,
        val,
        Recipe(epochs=2, batch_size=4, lr=1e-2),
        Task(2, None),
        seed=0,
        out_dir=tmp_path,
        spec={"mode": mode},
        device=device,
        extras=Extras(private=private),
    )
    assert len(rows) == 2
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in rows)
    assert 0 < info["epsilon"] <= 8.0 + 0.5


def test_ghost_needs_the_criterion():
    model = build_model({"family": "monai_unet", "channels": [4, 8], "strides": [2]}, 1, 1, True)
    spec = {"epsilon": 8.0, "delta": 1e-3, "max_grad_norm": 1.0, "grad_sample_mode": "ghost"}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="criterion"):
        make_private(model, optimizer, 8, Recipe(epochs=1, batch_size=4, lr=0.1), spec)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_an_empty_poisson_batch_is_a_noise_only_step(mode):
    """Poisson sampling can draw an empty batch (paper setting: p = e^-8 per step, ~4400 steps);
    Opacus' per-sample machinery fails on a zero-sample forward, so the loop takes the DP step
    without one: zero gradient plus noise, counted by the accountant."""
    from segmia.models.private import step_on_empty_batch

    torch.manual_seed(0)
    arch = {"family": "monai_unet", "channels": [4, 8], "strides": [2]}
    model = build_model(arch, 1, 1, private=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    spec = {
        "epsilon": 8.0,
        "delta": 1e-3,
        "max_grad_norm": 1.0,
        "grad_sample_mode": mode,
        "accountant": "rdp",
    }
    recipe = Recipe(epochs=1, batch_size=4, lr=0.1)
    gsm, optimizer, _, engine, wrapped = make_private(
        model, optimizer, 16, recipe, spec, criterion=PerImageDiceLoss()
    )
    before = [p.detach().clone() for p in gsm.parameters()]
    optimizer.zero_grad(set_to_none=True)
    step_on_empty_batch(optimizer)
    moved = torch.cat(
        [(b - p.detach()).flatten() for b, p in zip(before, gsm.parameters(), strict=True)]
    )
    # lr x noise_multiplier x max_grad_norm / expected batch size, per coordinate
    std = 0.1 * optimizer.noise_multiplier * 1.0 / 4
    assert 0.5 * std < float(moved.std()) < 1.5 * std
    assert engine.accountant.history[-1][-1] == 1  # one step accounted
    loss_fn = wrapped or PerImageDiceLoss()
    optimizer.zero_grad(set_to_none=True)
    loss_fn(gsm(torch.rand(3, 1, 16, 16)), torch.zeros(3, 16, 16, dtype=torch.long)).backward()
    optimizer.step()  # the next (non-empty) step works
    assert engine.accountant.history[-1][-1] == 2
    # and an empty batch right after a step (the training loop clears gradients only before a
    # non-empty batch): Opacus refused to noise the previous step's sums again
    step_on_empty_batch(optimizer)
    assert engine.accountant.history[-1][-1] == 3
