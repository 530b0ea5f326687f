"""Backdoor metrics of a (poisoned or clean) model on its pool's validation images.

On every validation image with the trigger written in (fully triggered): ``target_agreement`` is
the fraction of pixels predicted as the poisoned target mask, ``foreground_ratio`` the predicted
foreground mass over the true (clean) foreground mass, as in the study's logs, and
``backdoor_success`` = 1 - min(foreground_ratio, 1), the share of the true foreground the trigger
erases (about 0 for a clean model, 1 for a working backdoor; pixel agreement alone is high for
any model because most pixels are background). Clean Dice/IoU are the validation metrics.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.prepared import load_prepared
from ..data.split import read_split, role_indices
from ..io import read_json, write_json
from .metrics import hard_prediction
from .registry import load_model
from .train import Arrays
from .variants import apply_trigger, poison_target


@torch.inference_mode()
def backdoor_metrics(
    model,
    val: Arrays,
    trigger: str,
    size: int,
    value: int,
    target: str,
    device,
    batch_size: int = 64,
) -> dict:
    agree, pixels, predicted_fg, true_fg = 0.0, 0, 0.0, 0.0
    for start in range(0, len(val), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(val)))
        x, y = val.batch(idx, device)
        logits = model(apply_trigger(x, trigger, size, value)).float()
        hard = hard_prediction(logits)
        labels = hard[:, 0].long() if hard.shape[1] == 1 else hard.argmax(1)
        goal = poison_target(y, target)
        agree += float((labels == goal).sum())
        pixels += labels.numel()
        predicted_fg += float((labels > 0).sum())
        true_fg += float(((y > 0) & (y != 255)).sum())
    ratio = predicted_fg / max(true_fg, 1.0)
    return {
        "target_agreement": agree / pixels,
        "predicted_foreground": predicted_fg / len(val),
        "true_foreground": true_fg / len(val),
        "foreground_ratio": ratio,
        "backdoor_success": 1.0 - min(ratio, 1.0),
    }


def backdoor_job(
    *,
    model_dir,
    data_dir,
    split_path,
    trigger: str,
    size: int,
    value: int,
    target: str,
    out: str | Path,
    device,
) -> dict:
    data = load_prepared(data_dir, check=False)
    model, spec = load_model(model_dir, data.channels, data.out_channels, device)
    split = read_split(split_path)
    val = Arrays.from_numpy(
        data.images, data.masks, role_indices(split, spec["pool"], "val"), device
    )
    metrics = backdoor_metrics(model, val, trigger, size, value, target, device)
    clean = read_json(Path(model_dir) / "metrics.json")
    metrics.update(
        trigger=trigger,
        trigger_size=size,
        trigger_value=value,
        target=target,
        variant=spec["variant_name"],
        rate=spec["variant"].get("rate", 0.0),
        clean_dice=clean["val_dice"],
        clean_iou=clean["val_iou"],
    )
    write_json(out, metrics)
    return metrics
