"""Query a trained model on an MIA set: batched inference, stored for every attack to reuse.

A query directory holds ``logits.npy`` (N x C x H x W float16, memory-mappable) and
``samples.csv`` (``sample_id``, ``row`` into the prepared arrays, ``member`` 1/0, and per-image
statistics of the plain output: ``dice_loss`` and ``ce_mean``, the mean per-pixel cross-entropy).
Released maps, loss maps and attack features are derived from the logits on the fly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.prepared import load_prepared
from ..data.split import mia_indices, read_split, reference_universe
from ..io import atomic_path, open_memmap, read_csv, read_npy, write_csv
from ..models.job import load_model
from ..models.losses import cross_entropy_map, per_image_dice_loss, probabilities
from ..runtime import autocast

log = logging.getLogger("segmia")


@torch.inference_mode()
def predict_logits(
    model,
    images: np.ndarray,
    rows: np.ndarray,
    batch_size: int,
    device: torch.device,
    out: np.ndarray,
    amp: bool = True,
    channels_last: bool = True,
) -> None:
    """Write the logits of ``images[rows]`` into ``out`` (float16), ``batch_size`` at a time."""
    model.eval()
    if device.type == "cuda" and channels_last:
        model = model.to(memory_format=torch.channels_last)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        x = (
            torch.from_numpy(np.ascontiguousarray(images[batch]))
            .to(device, non_blocking=True)
            .float()
            .div_(255.0)
        )
        if device.type == "cuda" and channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x)
        out[start : start + len(batch)] = logits.float().cpu().numpy().astype(np.float16)


def outputs_job(
    model_dir: str | Path,
    data_dir: str | Path,
    split_path: str | Path,
    pool: str,
    train_size: int,
    sizes: dict,
    out_dir: str | Path,
    device: torch.device,
    batch_size: int = 64,
) -> pd.DataFrame:
    out_dir = Path(out_dir)
    data = load_prepared(data_dir, check=False)
    split = read_split(split_path)
    queries = query_set(split, pool, train_size, sizes)
    rows = queries["row"].to_numpy()
    model, spec = load_model(model_dir, data.channels, data.out_channels, device)
    amp = spec["training"].get("amp", True)
    shape = (len(rows), data.out_channels, data.images.shape[2], data.images.shape[3])
    with atomic_path(out_dir / "logits.npy") as tmp:
        out = open_memmap(tmp, np.float16, shape)
        predict_logits(model, data.images, rows, batch_size, device, out, amp=amp)
        out.flush()
        stats = per_image_stats(out, data.masks, rows, data.ignore_index)
        del out
    samples = queries.assign(**stats)
    write_csv(out_dir / "samples.csv", samples)
    log.info(
        "queried %s on %d samples of the %s query set (%d members, %d non-members)",
        model_dir,
        len(rows),
        pool,
        int((samples["member"] == 1).sum()),
        int((samples["member"] == 0).sum()),
    )
    return samples


def query_set(split: pd.DataFrame, pool: str, train_size: int, sizes: dict) -> pd.DataFrame:
    """The samples a model is queried on: sample_id, row, member (1, 0, or -1 = not evaluated).

    ``victim``/``shadow``: that pool's balanced MIA set; ``reference``: the reference universe
    (the victim's MIA set, filler and population; see ``split.reference_universe``).
    """
    if pool == "reference":
        return reference_universe(split, train_size, sizes)[["sample_id", "row", "member", "part"]]
    members, nonmembers = mia_indices(split, pool, train_size, sizes)
    rows = np.concatenate([members, nonmembers])
    return pd.DataFrame(
        {
            "sample_id": split.loc[rows, "sample_id"].to_numpy(),
            "row": rows,
            "member": np.r_[np.ones(len(members), int), np.zeros(len(nonmembers), int)],
        }
    )


def per_image_stats(
    logits: np.ndarray,
    masks: np.ndarray,
    rows: np.ndarray,
    ignore_index: int | None,
    chunk: int = 64,
) -> dict[str, np.ndarray]:
    """Per-image Dice loss and mean cross-entropy of the plain output, a chunk at a time."""
    dice, ce = [], []
    for start in range(0, len(rows), chunk):
        probs = probabilities(
            torch.from_numpy(np.asarray(logits[start : start + chunk], dtype=np.float32))
        )
        m = torch.from_numpy(np.ascontiguousarray(masks[rows[start : start + chunk]])).long()
        dice.append(per_image_dice_loss(probs, m, ignore_index))
        ce_map = cross_entropy_map(probs, m, ignore_index)
        valid = (
            torch.ones_like(m, dtype=torch.float)
            if ignore_index is None
            else (m != ignore_index).float()
        )
        ce.append(ce_map.sum((1, 2)) / valid.sum((1, 2)).clamp_min(1))
    return {"dice_loss": torch.cat(dice).numpy(), "ce_mean": torch.cat(ce).numpy()}


class QuerySet:
    """A model's answers on an MIA set, with the true masks, for building attack inputs."""

    def __init__(self, query_dir: str | Path, data_dir: str | Path):
        self.dir = Path(query_dir)
        self.samples = read_csv(self.dir / "samples.csv", required=("sample_id", "row", "member"))
        self.samples["sample_id"] = self.samples["sample_id"].astype(str)
        self.sample_ids = self.samples["sample_id"].tolist()
        self.logits = read_npy(self.dir / "logits.npy")
        data = load_prepared(data_dir, check=False)
        self.num_classes, self.ignore_index = data.num_classes, data.ignore_index
        self.masks = np.ascontiguousarray(data.masks[self.samples["row"].to_numpy()])
        if len(self.logits) != len(self.samples):
            from ..errors import DataError

            raise DataError(
                f"{self.dir}: logits.npy holds {len(self.logits)} maps but samples.csv lists "
                f"{len(self.samples)} samples; delete the directory and rerun its outputs step."
            )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return self.samples["member"].to_numpy()

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(logits float32, masks long, sample ids) of the samples at positions ``idx``."""
        idx = np.asarray(idx)
        logits = torch.from_numpy(np.asarray(self.logits[idx], dtype=np.float32))
        masks = torch.from_numpy(self.masks[idx]).long()
        return logits, masks, [self.sample_ids[i] for i in idx]
