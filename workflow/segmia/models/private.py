"""DP-SGD with Opacus: ``make_private_with_epsilon`` on a Poisson-sampled index loader.

The model must come from ``registry.build_model(..., private=True)`` (BatchNorm replaced by
GroupNorm through Opacus' ``ModuleValidator.fix``, no in-place operations). Per-sample gradients
use Opacus' hooks where a layer has a grad sampler and functorch elsewhere (e.g. MONAI's
transposed convolutions and PReLU). The privacy accountant (PRV by default) reports the spent
epsilon for ``delta`` (default 1/N).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset

log = logging.getLogger("segmia")


def make_private(model, optimizer, n_train: int, recipe, spec: dict):
    """Return (GradSampleModule, DPOptimizer, DPDataLoader over indices, PrivacyEngine)."""
    from opacus import PrivacyEngine

    loader = DataLoader(TensorDataset(torch.arange(n_train)), batch_size=recipe.batch_size)
    engine = PrivacyEngine(accountant=spec.get("accountant", "prv"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and "optimal" sampling notices
        model, optimizer, loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            target_epsilon=spec["epsilon"],
            target_delta=spec["delta"],
            epochs=recipe.epochs,
            max_grad_norm=spec["max_grad_norm"],
            grad_sample_mode=spec.get("grad_sample_mode", "hooks"),
        )
    log.info(
        "DP-SGD: target epsilon %.3g, delta %.3g, noise multiplier %.4f, max grad norm %.3g, "
        "sample rate %.4f (%d epochs)",
        spec["epsilon"],
        spec["delta"],
        optimizer.noise_multiplier,
        spec["max_grad_norm"],
        recipe.batch_size / n_train,
        recipe.epochs,
    )
    return model, optimizer, loader, engine
