"""Query a trained model on an MIA set: batched inference, stored for every attack to reuse.

A query directory holds ``logits.npy`` (N x C x H x W float16, memory-mappable) and
``samples.csv`` (``sample_id``, ``row`` into the prepared arrays, ``member`` 1/0, and per-image
statistics of the plain output: ``dice_loss`` and ``ce_mean``, the mean per-pixel cross-entropy).
Released maps, loss maps and attack features are derived from the logits on the fly.

A triggered query (``trigger``: the poisoning study's ``query_trigger``) writes the trigger into
every queried image (``models.variants.apply_trigger``) before the model sees it; the masks, and
so the per-image statistics and every attack's losses, stay the clean ones.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.prepared import load_prepared
from ..data.split import mia_indices, read_split, reference_universe
from ..io import atomic_path, open_memmap, read_csv, read_npy, write_csv
from ..models.losses import cross_entropy_map, per_image_dice_loss, probabilities
from ..models.registry import load_model
from ..models.variants import apply_trigger
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
    on_cpu: bool = False,
    compile: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Write the logits of ``images[rows]`` into ``out`` (float16), ``batch_size`` at a time;
    ``transform``: applied to each batch of images in [0, 1] before the model (a query trigger).

    ``images`` may be memory-mapped: each batch is one fancy-indexed read of uint8 rows. ``amp``
    (bf16 autocast) and ``channels_last`` apply on CUDA, and on the CPU too with ``on_cpu``.
    ``compile``: ``torch.compile`` with frozen weights (any device; the last batch is padded to
    ``batch_size`` so one graph serves all); eager if compilation fails (e.g. no C++ compiler).
    """
    model.eval()
    fast = device.type == "cuda" or on_cpu
    channels_last = channels_last and fast
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = torch.compile(model, dynamic=False) if compile else model
    freezing = _inductor_freezing() if compile else contextlib.nullcontext()
    with freezing:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            x = (
                torch.from_numpy(np.ascontiguousarray(images[batch]))
                .to(device, non_blocking=True)
                .float()
                .div_(255.0)
            )
            if transform is not None:
                x = transform(x)
            n = len(batch)
            if step is not model and n < batch_size:  # one shape: no recompilation
                x = torch.cat([x, x.new_zeros((batch_size - n, *x.shape[1:]))])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp, cpu=on_cpu):
                try:
                    logits = step(x)
                except Exception as err:  # compilation failed: stay eager
                    if step is model:
                        raise
                    log.warning("torch.compile failed (%s); running eagerly", _first_line(err))
                    step = model
                    logits = model(x)
            # cast on the device: half the bytes to copy back
            out[start : start + n] = logits[:n].to(torch.float16).cpu().numpy()


def _inductor_freezing():
    """Inductor's weight freezing (constant folding, prepacked convolution weights)."""
    try:
        from torch._inductor import config

        return config.patch(freezing=True)
    except (ImportError, AttributeError):
        return contextlib.nullcontext()


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


def query_job(
    *,
    model_dir: str | Path,
    data_dir: str | Path,
    split_path: str | Path,
    pool: str,
    train_size: int,
    sizes: dict,
    out_dir: str | Path,
    device: torch.device,
    batch_size: int = 64,
    trigger: dict | None = None,
) -> pd.DataFrame:
    """Query the model on ``pool``'s query set; ``trigger`` ({"trigger", "size", "value"}): with
    that trigger written into every query image (the masks stay clean)."""
    out_dir = Path(out_dir)
    data = load_prepared(data_dir, check=False)
    split = read_split(split_path)
    queries = query_set(split, pool, train_size, sizes)
    rows = queries["row"].to_numpy()
    model, spec = load_model(model_dir, data.channels, data.out_channels, device)
    amp = spec["training"].get("amp", True)
    compile_model = spec["training"].get("compile", False)
    shape = (len(rows), data.out_channels, data.images.shape[2], data.images.shape[3])
    with atomic_path(out_dir / "logits.npy") as tmp:
        out = open_memmap(tmp, np.float16, shape)
        predict_logits(
            model,
            data.images,
            rows,
            batch_size,
            device,
            out,
            amp=amp,
            compile=compile_model,
            transform=None
            if trigger is None
            else lambda x: apply_trigger(x, trigger["trigger"], trigger["size"], trigger["value"]),
        )
        out.flush()
        # from the stored float16 maps, a chunk at a time (no float32 copy of the whole set)
        stats = per_image_stats(out, data.masks[rows], data.ignore_index, device=device)
        del out
    samples = queries.assign(**stats)
    write_csv(out_dir / "samples.csv", samples)
    log.info(
        "queried %s on %d samples of the %s query set%s (%d members, %d non-members)",
        model_dir,
        len(rows),
        pool,
        "" if trigger is None else f", trigger {trigger} written in",
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
    logits,
    masks,
    ignore_index: int | None,
    chunk: int | None = None,
    device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Per-image Dice loss and mean cross-entropy of N maps (array, memmap or tensor).

    Works through ``chunk`` images at a time (default: about 8M values per chunk), converting
    only the chunk to float32, so a large float16 memmap is never copied whole; on ``device``
    (a GPU query computes them there: on the CPU they took 4x the GPU's forward passes for
    19-class 256x512 maps).
    """
    device = device or torch.device("cpu")
    if chunk is None:
        chunk = max(1, min(256, 2**23 // max(1, int(np.prod(logits.shape[1:])))))
    dice, ce = [], []
    for start in range(0, len(logits), chunk):
        part = logits[start : start + chunk]
        part = torch.as_tensor(np.asarray(part) if isinstance(part, np.ndarray) else part)
        probs = probabilities(part.to(device).float())
        m = torch.as_tensor(np.asarray(masks[start : start + chunk])).to(device).long()
        dice.append(per_image_dice_loss(probs, m, ignore_index))
        ce_map = cross_entropy_map(probs, m, ignore_index)
        valid = (
            torch.ones_like(m, dtype=torch.float)
            if ignore_index is None
            else (m != ignore_index).float()
        )
        ce.append(ce_map.sum((1, 2)) / valid.sum((1, 2)).clamp_min(1))
    return {"dice_loss": torch.cat(dice).cpu().numpy(), "ce_mean": torch.cat(ce).cpu().numpy()}


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
        #: each sample's group (patient, city, or the image itself): the membership unit
        self.groups = data.index["group"].astype(str).to_numpy()[self.samples["row"].to_numpy()]
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
