"""Knowledge distillation defence (as in the study).

The teacher is the undefended victim (trained on the private data; the DAG reuses it). A
reference set of the victim's pool that holds no private training sample and no MIA sample (the
pool's training candidates beyond the training size N) is pseudo-labelled by the teacher; only
images on which the teacher's Dice loss (against their true masks) is at most the teacher's
validation loss are kept, and a fresh student trains on (image, teacher label) pairs. The student
is released.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from ..data.split import train_indices
from ..errors import DataError
from .losses import per_image_dice_loss, probabilities
from .metrics import hard_prediction

log = logging.getLogger("segmia")


def reference_rows(
    split: pd.DataFrame, pool: str, train_size: int, reference_size: int
) -> np.ndarray:
    """Rows of the reference set: training candidates of ``pool`` ranked after the first N."""
    candidates = split[
        (split["pool"] == pool) & (split["role"] == "train") & (split["order"] >= train_size)
    ]
    rows = candidates.sort_values("order").index.to_numpy()[:reference_size]
    if len(rows) == 0:
        raise DataError(
            f"knowledge distillation needs a reference set, but the {pool} pool has no training "
            f"candidates beyond the training size {train_size}. Enlarge the pool in the config "
            "(it must hold val_size + mia_size + N + the reference set)."
        )
    return rows


@torch.inference_mode()
def pseudo_label(
    teacher,
    images: torch.Tensor,
    masks: torch.Tensor,
    ignore_index: int | None,
    threshold: float,
    batch_size: int,
    device,
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """(teacher labels N x H x W, kept mask over the N images, teacher per-image loss)."""
    teacher.eval()
    labels, losses = [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float().div(255.0)
        logits = teacher(x).float()
        probs = probabilities(logits)
        y = masks[start : start + batch_size].to(device).long()
        losses.append(per_image_dice_loss(probs, y, ignore_index).cpu())
        hard = hard_prediction(logits)
        labels.append((hard[:, 0] if hard.shape[1] == 1 else hard.argmax(1)).to(torch.uint8).cpu())
    loss = torch.cat(losses)
    kept = (loss <= threshold).numpy()
    return torch.cat(labels), kept, loss


def distillation_set(
    split, pool, train_size, spec, data, teacher, teacher_val_loss, ignore_index, device
):
    """Images (uint8) and teacher labels of the filtered reference set, and its row indices."""
    rows = reference_rows(split, pool, train_size, int(spec["reference_size"]))
    forbidden = set(train_indices(split, pool, train_size))
    assert not forbidden & set(rows), "a private training sample reached the student"
    images = torch.from_numpy(np.ascontiguousarray(data.images[rows]))
    masks = torch.from_numpy(np.ascontiguousarray(data.masks[rows]))
    labels, kept, loss = pseudo_label(
        teacher, images, masks, ignore_index, teacher_val_loss, 64, device
    )
    if not kept.any():
        kept[np.argsort(loss.numpy())[: max(1, len(rows) // 10)]] = True
        log.warning("no reference image beat the teacher's validation loss; kept the best 10%%")
    log.info(
        "distillation: %d of %d reference images kept (teacher loss <= %.4f)",
        kept.sum(),
        len(rows),
        teacher_val_loss,
    )
    return images[kept], labels[kept], rows[kept]
