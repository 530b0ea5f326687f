"""Embedded synthetic datasets: generated deterministically from a seed, no download.

``synthetic_ct``
    1-channel "CT" slices in the spirit of MONAI's ``create_test_image_2d``: grey-level blobs on a
    darker background with per-pixel noise. Each group is a "patient": ``group_size`` consecutive
    axial slices through one 3-D phantom (an organ ellipsoid with darker lesions, plus unlabelled
    bright distractor organs), so neighbouring slices are strongly correlated, as in real CT.
    Mask: organ and lesions merged into one foreground class (like liver + tumour in the study).

``synthetic_scenes``
    3-channel "street scenes" with four object classes on a textured background: 1 disc,
    2 box, 3 triangle, 4 striped patch; a dark "ego vehicle" band along the bottom is void
    (ignore index 255), as in Cityscapes. Each group is a sequence sharing one palette.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

IGNORE_INDEX = 255
#: (sample id, group id) formats of each generator's index rows: sample s of group g
NAMES = {
    "synthetic_ct": ("ct{g:04d}_s{s:03d}", "patient{g:04d}"),
    "synthetic_scenes": ("scene{g:04d}_{s:03d}", "sequence{g:04d}"),
}


def synthetic_index(source: str, groups: int, group_size: int) -> pd.DataFrame:
    """The index (sample_id, group) of a synthetic dataset, without generating its images."""
    sample, group = NAMES[source]
    rows = [
        (sample.format(g=g, s=s), group.format(g=g))
        for g in range(groups)
        for s in range(group_size)
    ]
    return pd.DataFrame(rows, columns=["sample_id", "group"])


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return yy / height, xx / width


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def synthetic_ct(groups: int, group_size: int, height: int, width: int, noise: float, seed: int):
    """Return images (N,1,H,W) uint8, masks (N,H,W) uint8 and the index."""
    yy, xx = _grid(height, width)
    images = np.empty((groups * group_size, 1, height, width), dtype=np.uint8)
    masks = np.empty((groups * group_size, height, width), dtype=np.uint8)
    for g in range(groups):
        rng = np.random.default_rng([seed, g])
        organ_c = rng.uniform(0.35, 0.65, size=2)
        organ_r = rng.uniform(0.15, 0.28, size=2)
        organ_rz = group_size * rng.uniform(0.65, 0.9)
        organ_grey = rng.uniform(0.45, 0.65)
        background = rng.uniform(0.1, 0.25)
        lesions = [
            (
                organ_c + rng.uniform(-0.5, 0.5, 2) * organ_r,
                rng.uniform(0.03, 0.07),
                rng.uniform(0, group_size),
                rng.uniform(0.1, 0.25),
            )
            for _ in range(rng.integers(0, 3))
        ]
        distractors = [
            (rng.uniform(0.1, 0.9, 2), rng.uniform(0.04, 0.1), rng.uniform(0.7, 0.95))
            for _ in range(rng.integers(1, 4))
        ]
        drift = rng.normal(0, 0.004, size=(group_size, 2)).cumsum(axis=0)
        for s in range(group_size):
            dz = (s - (group_size - 1) / 2) / organ_rz
            scale = np.sqrt(max(1.0 - dz * dz, 0.05))
            cy, cx = organ_c + drift[s]
            organ = ((yy - cy) / (organ_r[0] * scale)) ** 2 + (
                (xx - cx) / (organ_r[1] * scale)
            ) ** 2 <= 1
            image = np.full((height, width), background, dtype=np.float32)
            for (dy, dx), r, bright in distractors:
                image[(yy - dy) ** 2 + (xx - dx) ** 2 <= r * r] = bright
            image[organ] = organ_grey
            label = organ.copy()
            for (ly, lx), r, z, dark in lesions:
                rz = r * np.sqrt(max(1.0 - ((s - z) / (group_size / 3)) ** 2, 0.0))
                lesion = (
                    (yy - ly - drift[s, 0]) ** 2 + (xx - lx - drift[s, 1]) ** 2 <= rz * rz
                ) & organ
                image[lesion] = dark
                label |= lesion
            image += rng.uniform(-noise / 2, noise / 2, size=image.shape).astype(np.float32)
            i = g * group_size + s
            images[i, 0] = _to_uint8(image)
            masks[i] = label.astype(np.uint8)
    index = synthetic_index("synthetic_ct", groups, group_size)
    meta = {
        "name": "synthetic_ct",
        "source": "synthetic_ct",
        "num_classes": 2,
        "ignore_index": None,
    }
    return images, masks, index, meta


def synthetic_scenes(
    groups: int, group_size: int, height: int, width: int, noise: float, seed: int
):
    """Return images (N,3,H,W) uint8, masks (N,H,W) uint8 and the index."""
    yy, xx = _grid(height, width)
    images = np.empty((groups * group_size, 3, height, width), dtype=np.uint8)
    masks = np.empty((groups * group_size, height, width), dtype=np.uint8)
    hood = yy >= 0.875
    for g in range(groups):
        rng = np.random.default_rng([seed, 1000 + g])
        palette = rng.uniform(0.2, 1.0, size=(5, 3)).astype(np.float32)
        palette[0] *= 0.5  # darker background
        sky = rng.uniform(0.3, 0.7)
        for s in range(group_size):
            image = palette[0][:, None, None] * (0.7 + 0.3 * (yy < sky))[None]
            image = image + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 8) * xx)[None]
            label = np.zeros((height, width), dtype=np.uint8)
            for cls in rng.permutation([1, 2, 3, 4, 1, 2]):
                cy, cx = rng.uniform(0.15, 0.8), rng.uniform(0.1, 0.9)
                r = rng.uniform(0.06, 0.16)
                if cls == 1:
                    shape = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * height / width)) ** 2 <= 1
                elif cls == 2:
                    shape = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r * rng.uniform(0.3, 0.8))
                elif cls == 3:
                    shape = (
                        (yy <= cy + r)
                        & (yy >= cy - r)
                        & (np.abs(xx - cx) * 2 <= (yy - cy + r) * height / width)
                    )
                else:
                    shape = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
                colour = palette[cls][:, None, None]
                if cls == 4:
                    stripes = (np.sin(2 * np.pi * 6 * (xx + yy) / r) > 0).astype(np.float32)
                    colour = colour * (0.6 + 0.4 * stripes)[None]
                image = np.where(shape[None], colour, image)
                label[shape] = cls
            image = np.where(hood[None], 0.05, image)
            label[hood] = IGNORE_INDEX
            image = image + rng.uniform(-noise / 2, noise / 2, size=image.shape).astype(np.float32)
            i = g * group_size + s
            images[i] = _to_uint8(image)
            masks[i] = label
    index = synthetic_index("synthetic_scenes", groups, group_size)
    meta = {
        "name": "synthetic_scenes",
        "source": "synthetic_scenes",
        "num_classes": 5,
        "ignore_index": IGNORE_INDEX,
    }
    return images, masks, index, meta


GENERATORS = {"synthetic_ct": synthetic_ct, "synthetic_scenes": synthetic_scenes}


def generate(source: str, params: dict):
    """Generate the synthetic dataset ``source`` with the config's ``synthetic`` parameters."""
    return GENERATORS[source](**params)
