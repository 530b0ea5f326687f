"""Kvasir-SEG: 1000 colonoscopy images with polyp masks (JPEG, variable size).

Preparation (docs/protocol.md, "Datasets": 256 x 256, 3 channels, binary mask):
- images are decoded as RGB (``channel_order: bgr`` = the original code's cv2 order, a quirk),
  resized bilinearly to ``height`` x ``width``;
- masks (JPEG, so with compression noise around 0 and 255) are resized nearest-neighbour and
  binarised at half range, value >= 128 -> polyp (``binarize: floor`` = the original code's
  ``floor(v / 255)``, which keeps only pixels of exactly 255, a quirk);
- group id = the image (Kvasir-SEG has no patient ids).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..prepared import PreparedWriter
from .base import Archive, Source, not_hidden
from .imaging import read_image, resize_image, resize_mask, to_chw

log = logging.getLogger("segmia")

DEFAULTS = {"height": 256, "width": 256, "channel_order": "rgb", "binarize": "half"}
SUFFIXES = {".jpg", ".jpeg", ".png"}
#: images of Kvasir-SEG, each its own group (the config check sizes the split with it before
#: the data are prepared)
IMAGES = 1000


def find_root(raw: str | Path) -> Path:
    """The directory holding ``images/`` and ``masks/`` (``Kvasir-SEG/`` in the archive)."""
    raw = Path(raw)
    for candidate in [raw, *sorted(p for p in raw.iterdir() if p.is_dir())] if raw.is_dir() else []:
        names = {p.name.lower(): p for p in candidate.iterdir() if p.is_dir()}
        if "images" in names and "masks" in names:
            return candidate
    raise DataError(
        f"{raw}: no Kvasir-SEG/images and Kvasir-SEG/masks folders found; the archive does not "
        "have the Kvasir-SEG layout"
    )


def _files(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    }


def pairs(raw: str | Path) -> list[tuple[str, Path, Path]]:
    root = find_root(raw)
    dirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    images, masks = _files(dirs["images"]), _files(dirs["masks"])
    if not images:
        raise DataError(f"{dirs['images']}: no images found")
    for have, lack, what in ((images, masks, "mask"), (masks, images, "image")):
        missing = sorted(set(have) - set(lack))
        if missing:
            example = have[missing[0]]
            raise DataError(
                f"{example}: no matching {what} in {dirs['masks' if what == 'mask' else 'images']}"
                f" ({len(missing)} file(s) without a {what}: {', '.join(missing[:5])})"
            )
    return [(sid, images[sid], masks[sid]) for sid in sorted(images)]


def check_layout(raw: Path) -> None:
    pairs(raw)


def binarize(mask: np.ndarray, how: str) -> np.ndarray:
    if how == "floor":
        return (mask == 255).astype(np.uint8)
    return (mask >= 128).astype(np.uint8)


def prepare(raw: str | Path, params: dict, out: str | Path, name: str = "kvasir") -> int:
    params = {**DEFAULTS, **params}
    height, width = params["height"], params["width"]
    items = pairs(raw)
    log.info("kvasir: %d image/mask pairs", len(items))
    with PreparedWriter(out, len(items), 3, height, width) as writer:
        for sid, image_path, mask_path in items:
            image = read_image(image_path, "RGB")
            mask = read_image(mask_path, "L")
            if image.shape[:2] != mask.shape:
                raise DataError(
                    f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                    f"{image_path.name} is {image.shape[1]}x{image.shape[0]}"
                )
            image = to_chw(resize_image(image, height, width), params["channel_order"])
            mask = binarize(resize_mask(mask, height, width), params["binarize"])
            writer.add(image, mask, sid, sid)
        writer.finish(
            {
                "name": name,
                "source": "kvasir",
                "num_classes": 2,
                "ignore_index": None,
                "classes": ["background", "polyp"],
                "prepare": params,
            }
        )
    return len(items)


SOURCE = Source(
    name="kvasir",
    title="Kvasir-SEG",
    base_url="https://datasets.simula.no/downloads",
    home="https://datasets.simula.no/downloads/kvasir-seg.zip (page: https://datasets.simula.no/kvasir-seg/)",
    archives=(Archive("kvasir-seg.zip", "about 46 MB"),),
    keep=not_hidden,
    check_layout=check_layout,
    prepare=prepare,
    defaults=DEFAULTS,
)
