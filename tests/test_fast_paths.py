"""The speed paths do not change results: bf16 autocast and channels-last (which the pipeline uses
on CUDA; ``on_cpu=True`` runs them on the CPU here) give the same logits within bf16 tolerance and
the same attack AUCs within 0.02; chunked per-image statistics of a float16 memmap equal those of
a float32 copy; batch size does not change the stored logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segmia.attacks.metrics import roc_metrics
from segmia.attacks.outputs import per_image_stats, predict_logits
from segmia.models.losses import dice_loss
from segmia.models.registry import build_model
from segmia.runtime import autocast

ARCH = {"family": "monai_unet", "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


@pytest.fixture(scope="module")
def overfitted(tmp_path_factory):
    """A tiny U-Net overfitted on 16 members (48x48 noisy blobs), 16 non-members, as memmaps."""
    rng = np.random.default_rng(0)
    n, size = 32, 48
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx, r = rng.integers(12, 36, 2).tolist() + [int(rng.integers(5, 12))]
        masks[i] = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
    noise = rng.normal(0, 0.45, (n, 1, size, size))
    images = np.clip((0.3 + 0.4 * masks[:, None] + noise) * 255, 0, 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("fast")
    np.save(folder / "images.npy", images)
    images = np.load(folder / "images.npy", mmap_mode="r")
    torch.manual_seed(0)
    model = build_model(ARCH, 1, 1)
    optimizer = torch.optim.NAdam(model.parameters(), lr=3e-3)
    loss_fn = dice_loss(2, None)
    x = torch.from_numpy(np.array(images[:16])).float() / 255
    y = torch.from_numpy(masks[:16]).long()
    model.train()
    for _ in range(60):
        for start in range(0, 16, 8):
            optimizer.zero_grad()
            loss_fn(model(x[start : start + 8]), y[start : start + 8]).backward()
            optimizer.step()
    labels = np.r_[np.ones(16, int), np.zeros(16, int)]
    return model.eval(), images, masks, labels, folder


def _logits(model, images, batch_size=8, **kwargs):
    out = np.zeros((len(images), 1, *images.shape[2:]), np.float16)
    predict_logits(
        model, images, np.arange(len(images)), batch_size, torch.device("cpu"), out, **kwargs
    )
    return out


def test_bf16_and_channels_last_keep_logits_and_attack_aucs(overfitted):
    model, images, masks, labels, _ = overfitted
    plain = _logits(model, images)  # the CPU path: float32, contiguous
    fast = _logits(model, images, on_cpu=True)  # bf16 autocast + channels-last
    cl = _logits(model, images, amp=False, on_cpu=True)  # channels-last only
    p_plain = torch.sigmoid(torch.from_numpy(plain.astype(np.float32)))
    p_fast = torch.sigmoid(torch.from_numpy(fast.astype(np.float32)))
    np.testing.assert_allclose(cl, plain, atol=2e-3, rtol=2e-3)  # float16 storage rounding
    assert float((p_fast - p_plain).abs().max()) < 0.08
    assert float((p_fast - p_plain).abs().mean()) < 0.01
    assert not np.array_equal(fast, plain)  # bf16 really ran
    stats_plain = per_image_stats(plain, masks, None)
    stats_fast = per_image_stats(fast, masks, None)
    for key in ("dice_loss", "ce_mean"):  # lower loss = member (global-loss attack)
        auc_plain = roc_metrics(labels, -stats_plain[key])["auc"]
        auc_fast = roc_metrics(labels, -stats_fast[key])["auc"]
        assert auc_plain > 0.6, (key, auc_plain)  # the case has a membership signal to keep
        assert abs(auc_fast - auc_plain) <= 0.02, (key, auc_plain, auc_fast)


def test_batch_size_does_not_change_logits(overfitted):
    model, images, *_ = overfitted
    np.testing.assert_allclose(
        _logits(model, images, batch_size=1),
        _logits(model, images, batch_size=32),
        rtol=2e-3,  # one float16 step
        atol=2e-3,
    )


def test_chunked_stats_of_a_float16_memmap_equal_a_float32_copy(overfitted):
    model, images, masks, _, folder = overfitted
    out = np.lib.format.open_memmap(
        folder / "logits.npy", mode="w+", dtype=np.float16, shape=(len(images), 1, 48, 48)
    )
    out[:] = _logits(model, images)
    whole = per_image_stats(
        torch.from_numpy(np.asarray(out, np.float32)), torch.from_numpy(masks).long(), None, 256
    )
    chunked = per_image_stats(out, masks, None, chunk=5)
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-6, atol=1e-7)


def test_cpu_autocast_is_opt_in():
    cpu = torch.device("cpu")
    with autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, cpu=True):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(cpu, enabled=False, cpu=True):
        assert not torch.is_autocast_enabled("cpu")


def test_compile_falls_back_to_eager_when_compilation_fails(overfitted, monkeypatch, caplog):
    model, images, *_ = overfitted
    plain = _logits(model, images, batch_size=12)

    def broken(module, **kwargs):
        def run(x):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level("WARNING", logger="segmia"):
        fallback = _logits(model, images, batch_size=12, compile=True)
    np.testing.assert_array_equal(fallback, plain)
    assert "torch.compile failed" in caplog.text


@pytest.mark.slow
def test_compiled_queries_match_eager(overfitted):
    """torch.compile (inductor, frozen weights, padded last batch) on the CPU: same logits."""
    model, images, *_ = overfitted
    plain = _logits(model, images, batch_size=12)  # 32 = 12 + 12 + 8: the last batch is padded
    compiled = _logits(model, images, batch_size=12, compile=True)
    np.testing.assert_allclose(compiled, plain, rtol=2e-3, atol=2e-3)
