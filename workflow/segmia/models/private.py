"""DP-SGD with Opacus: ``make_private_with_epsilon`` on a Poisson-sampled index loader.

The model must come from ``registry.build_model(..., private=True)`` (BatchNorm replaced by
GroupNorm through Opacus' ``ModuleValidator.fix``, no in-place operations). ``grad_sample_mode``:

- ``hooks`` (default): per-sample gradients from Opacus' layer hooks where a layer has a grad
  sampler (convolutions, GroupNorm, linear) and functorch elsewhere (e.g. MONAI's PReLU);
- ``functorch``: functorch (``vmap`` of the per-sample gradient) for every layer;
- ``ghost``: Opacus' fast gradient clipping: per-sample gradient *norms* layer by layer (never
  all per-sample gradients at once), then a second backward pass of the clipping-weighted loss.
  For these conv nets (Opacus has ghost norms for linear and embedding layers only) it trades a
  second backward pass for memory. Needs the per-sample loss (``criterion`` with ``reduction``).

All three give the same clipped gradients (tests/test_dp_grad_samples.py); speed and memory are
in benchmarks/. The privacy accountant (PRV by default) reports the spent epsilon for ``delta``
(default 1/N).
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset

log = logging.getLogger("segmia")


GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")


def make_private(model, optimizer, n_train: int, recipe, spec: dict, criterion=None):
    """Return (GradSampleModule, DPOptimizer, DPDataLoader over indices, PrivacyEngine, loss).

    ``loss`` is ``criterion`` wrapped for ghost clipping (its result's ``backward()`` runs both
    passes), or None in the other modes (use ``criterion`` as it is).
    """
    from opacus import PrivacyEngine

    mode = spec.get("grad_sample_mode", "hooks")
    if mode == "ghost" and criterion is None:
        raise ValueError("grad_sample_mode ghost needs the per-sample criterion")
    loader = DataLoader(TensorDataset(torch.arange(n_train)), batch_size=recipe.batch_size)
    engine = PrivacyEngine(accountant=spec.get("accountant", "prv"))
    extra = {"criterion": criterion} if mode == "ghost" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and "optimal" sampling notices
        made = engine.make_private_with_epsilon(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            target_epsilon=spec["epsilon"],
            target_delta=spec["delta"],
            epochs=recipe.epochs,
            max_grad_norm=spec["max_grad_norm"],
            grad_sample_mode=mode,
            **extra,
        )
    if mode == "ghost":
        model, optimizer, loss, loader = made
    else:
        (model, optimizer, loader), loss = made, None
    log.info(
        "DP-SGD: target epsilon %.3g, delta %.3g, noise multiplier %.4f, max grad norm %.3g, "
        "sample rate %.4f (%d epochs), grad-sample mode %s",
        spec["epsilon"],
        spec["delta"],
        optimizer.noise_multiplier,
        spec["max_grad_norm"],
        recipe.batch_size / n_train,
        recipe.epochs,
        mode,
    )
    return model, optimizer, loader, engine, loss


def step_on_empty_batch(optimizer) -> None:
    """The DP-SGD step of an empty Poisson batch: a zero gradient plus noise, counted by the
    accountant (a forward pass on zero samples fails in Opacus' per-sample machinery)."""
    from opacus.optimizers import DPOptimizerFastGradientClipping

    ghost = isinstance(optimizer, DPOptimizerFastGradientClipping)
    # the last step's clipped sums are still marked processed: Opacus refuses to noise them again
    optimizer.zero_grad(set_to_none=True)
    for p in optimizer.params:
        if ghost:
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = p.new_zeros((0, *p.shape))
    optimizer.step()
