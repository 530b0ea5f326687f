"""What the victim releases per query: its output map, post-processed by an output defence.

``none``: per-pixel probabilities (sigmoid or softmax of the logits); with ``logits: true`` (the
protocol switch ``attacker_input: logits``, as the original code's Type-I/II attacks) the raw
logits themselves.
``argmax``: hard labels only, as a one-hot map (binary: logit > 0). With ``faithful: true`` the
original code's ``round(logit)`` for binary tasks.
``output_noise``: probabilities plus Gaussian noise N(0, sigma), clipped at 0 and renormalised to
sum to one over the classes (He et al.; a binary map is clipped to [0, 1]); the noise of a query is fixed by (seed, sample), so a
query asked twice gets the same answer.
"""

from __future__ import annotations

import torch

from ..models.losses import probabilities
from ..models.metrics import hard_prediction
from ..runtime import stable_seed

KINDS = ("none", "argmax", "output_noise")


def release(logits: torch.Tensor, spec: dict, sample_ids: list[str] | None = None) -> torch.Tensor:
    """Released map (N x C x H x W float) for ``logits`` under the release ``spec``."""
    kind = spec.get("type", "none")
    logits = logits.float()
    if kind == "none":
        return logits if spec.get("logits", False) else probabilities(logits)
    if kind == "argmax":
        if spec.get("faithful", False) and logits.shape[1] == 1:
            return torch.round(logits)
        return hard_prediction(logits)
    if kind == "output_noise":
        probs = probabilities(logits)
        noise = torch.stack(
            [
                torch.randn(
                    probs.shape[1:],
                    generator=torch.Generator().manual_seed(stable_seed(spec.get("seed", 0), sid)),
                )
                for sid in sample_ids
            ]
        ).to(probs.device)
        if probs.shape[1] == 1:  # binary: one probability per pixel, clipped to [0, 1]
            return (probs + noise * spec["sigma"]).clamp(0, 1)
        noisy = (probs + noise * spec["sigma"]).clamp_min(0)
        return noisy / noisy.sum(1, keepdim=True).clamp_min(1e-12)
    raise ValueError(f"unknown release {kind!r}")
