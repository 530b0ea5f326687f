"""The uniform prepared format every dataset is converted to.

A prepared dataset is a directory with
- ``images.npy``: N x C x H x W uint8 (memory-mappable),
- ``masks.npy``: N x H x W uint8 class ids, ``ignore_index`` (255) for void pixels,
- ``index.csv``: one row per sample: ``sample_id`` (unique string) and ``group`` (patient,
  city, sequence: samples of one group never land in two pools or two roles),
- ``meta.json``: ``name``, ``num_classes`` (background included; 2 = binary task),
  ``ignore_index`` (or null), ``channels``, ``height``, ``width``, ``source``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..io import (
    open_memmap,
    read_csv,
    read_json,
    read_npy,
    temp_beside,
    write_csv,
    write_json,
    write_npy,
)

FILES = ("images.npy", "masks.npy", "index.csv", "meta.json")


def output_channels(num_classes: int) -> int:
    """Model output channels: 1 logit for a binary task (as in the paper), else one per class."""
    return 1 if num_classes == 2 else num_classes


@dataclass
class Prepared:
    images: np.ndarray
    masks: np.ndarray
    index: pd.DataFrame
    meta: dict

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def out_channels(self) -> int:
        return output_channels(self.num_classes)

    @property
    def ignore_index(self) -> int | None:
        return self.meta.get("ignore_index")

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])


def write_prepared(
    directory: str | Path,
    images: np.ndarray,
    masks: np.ndarray,
    index: pd.DataFrame,
    meta: dict,
) -> None:
    """Validate and write a prepared dataset (each file atomically, meta.json last)."""
    directory = Path(directory)
    meta = {
        **meta,
        "channels": int(images.shape[1]),
        "height": int(images.shape[2]),
        "width": int(images.shape[3]),
    }
    check_arrays(images, masks, index, meta, where=str(directory))
    write_npy(directory / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
    write_npy(directory / "masks.npy", np.ascontiguousarray(masks, dtype=np.uint8))
    write_csv(directory / "index.csv", index[["sample_id", "group"]])
    write_json(directory / "meta.json", meta)


def check_arrays(images, masks, index, meta, where: str) -> None:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(
            f"{where}/images.npy: expected N x C x H x W uint8, got shape {images.shape} {images.dtype}."
        )
    if masks.ndim != 3 or masks.dtype != np.uint8:
        raise DataError(
            f"{where}/masks.npy: expected N x H x W uint8, got shape {masks.shape} {masks.dtype}."
        )
    if masks.shape[0] != images.shape[0] or masks.shape[1:] != images.shape[2:]:
        raise DataError(
            f"{where}: images.npy {images.shape} and masks.npy {masks.shape} disagree in sample "
            "count or image size; the prepared dataset is inconsistent. Delete the directory and "
            "rerun the prepare step."
        )
    if len(index) != images.shape[0]:
        raise DataError(
            f"{where}/index.csv has {len(index)} rows but images.npy holds {images.shape[0]} "
            "samples; the prepared dataset is inconsistent. Delete the directory and rerun the "
            "prepare step."
        )
    if index["sample_id"].duplicated().any():
        dup = index.loc[index["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise DataError(f"{where}/index.csv: sample_id {dup!r} appears twice.")
    allowed = set(range(int(meta["num_classes"])))
    if meta.get("ignore_index") is not None:
        allowed.add(int(meta["ignore_index"]))
    present = label_values(masks)
    bad = sorted(present - allowed)
    if bad:
        raise DataError(
            f"{where}/masks.npy holds label value(s) {bad[:10]} outside the class set "
            f"{sorted(allowed)} (num_classes={meta['num_classes']}, ignore_index="
            f"{meta.get('ignore_index')}). The masks are corrupt or were prepared with another "
            "label mapping; delete the directory and rerun the prepare step."
        )


def label_values(masks: np.ndarray, chunk: int = 256) -> set[int]:
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, masks.shape[0], chunk):
        counts += np.bincount(np.asarray(masks[start : start + chunk]).ravel(), minlength=256)
    return {int(v) for v in np.flatnonzero(counts)}


def load_prepared(directory: str | Path, check: bool = True) -> Prepared:
    """Open a prepared dataset (arrays memory-mapped) and check it is consistent."""
    directory = Path(directory)
    missing = [f for f in FILES if not (directory / f).exists()]
    if missing:
        raise DataError(
            f"{directory}: prepared dataset incomplete, missing {', '.join(missing)}. Rerun its "
            "prepare (or synthesize) step."
        )
    meta = read_json(directory / "meta.json")
    images = read_npy(directory / "images.npy")
    masks = read_npy(directory / "masks.npy")
    index = read_csv(directory / "index.csv", required=("sample_id", "group"))
    index["sample_id"] = index["sample_id"].astype(str)
    index["group"] = index["group"].astype(str)
    if check:
        check_arrays(images, masks, index, meta, where=str(directory))
    return Prepared(images=images, masks=masks, index=index, meta=meta)


class PreparedWriter:
    """Write a prepared dataset sample by sample, without holding it in memory.

    ``images.npy`` and ``masks.npy`` are memory-mapped ``.npy`` files (``open_memmap``) under
    temporary names in ``directory``; :meth:`finish` validates them, renames them into place and
    writes ``index.csv`` and ``meta.json`` (last). Leaving the ``with`` block without
    :meth:`finish` (an error) deletes the temporary files: nothing half-written remains.
    """

    def __init__(self, directory: str | Path, count: int, channels: int, height: int, width: int):
        if count < 1:
            raise DataError(f"{directory}: no samples to write.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._tmp: dict[str, Path] = {}
        for name in ("images.npy", "masks.npy"):
            self._tmp[name] = temp_beside(self.directory / name)
        try:  # disk space reserved up front: a full disk is an OSError here, not a SIGBUS later
            self.images = open_memmap(
                self._tmp["images.npy"], np.uint8, (count, channels, height, width)
            )
            self.masks = open_memmap(self._tmp["masks.npy"], np.uint8, (count, height, width))
        except BaseException:
            self.close()
            raise
        self.rows: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, image: np.ndarray, mask: np.ndarray, sample_id: str, group: str) -> None:
        """Append one sample: image C x H x W (or H x W for one channel) and mask H x W, uint8."""
        i = len(self.rows)
        if i >= self.images.shape[0]:
            raise DataError(
                f"{self.directory}: more samples than the {self.images.shape[0]} announced."
            )
        image = np.asarray(image)
        self.images[i] = image if image.ndim == 3 else image[None]
        self.masks[i] = mask
        self.rows.append((str(sample_id), str(group)))

    def finish(self, meta: dict) -> None:
        n = self.images.shape[0]
        if len(self.rows) != n:
            raise DataError(
                f"{self.directory}: {len(self.rows)} samples written but {n} were announced."
            )
        images, masks = self.images, self.masks
        images.flush()
        masks.flush()
        index = pd.DataFrame(self.rows, columns=["sample_id", "group"])
        meta = {
            **meta,
            "channels": int(images.shape[1]),
            "height": int(images.shape[2]),
            "width": int(images.shape[3]),
        }
        check_arrays(images, masks, index, meta, where=str(self.directory))
        del self.images, self.masks, images, masks  # close the memory maps before renaming
        for name, tmp in self._tmp.items():
            os.replace(tmp, self.directory / name)
        self._tmp = {}
        write_csv(self.directory / "index.csv", index)
        write_json(self.directory / "meta.json", meta)

    def close(self) -> None:
        for name in ("images", "masks"):
            if hasattr(self, name):
                delattr(self, name)
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)
        self._tmp = {}

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
