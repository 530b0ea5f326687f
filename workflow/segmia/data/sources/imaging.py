"""Reading, checking and resizing the images and masks of the public datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError


def read_image(path: str | Path, mode: str) -> np.ndarray:
    """Decode ``path`` fully (a truncated or corrupt file is a DataError naming it) as ``mode``.

    ``mode``: ``RGB`` (H x W x 3), ``L`` (H x W, 8-bit grey) or ``label`` (H x W, the file must
    already be a single-channel 8-bit image: label ids are never converted from colour).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if mode == "label":
                if img.mode not in ("L", "P"):
                    raise DataError(
                        f"{path}: expected an 8-bit single-channel label image, found mode "
                        f"{img.mode} ({img.size[0]}x{img.size[1]}). Is this the right file?"
                    )
                array = np.asarray(img if img.mode == "L" else img.convert("L"))
            else:
                array = np.asarray(img.convert(mode))
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"{path}: unreadable image ({err}); the file is truncated or corrupt. Delete the "
            "unpacked dataset (resources/raw/<source>/extracted) and rerun to unpack it again."
        ) from None
    return np.ascontiguousarray(array)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (antialiased when shrinking) of H x W x 3 uint8, H x W uint8 or float32."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    if image.dtype == np.float32 and image.ndim == 2:
        out = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(out, dtype=np.float32)
    out = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(out)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an H x W uint8 label map (no new label values)."""
    from PIL import Image

    if mask.shape == (height, width):
        return mask
    out = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(out)


def to_chw(image: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """H x W x 3 RGB -> 3 x H x W in ``channel_order`` (``bgr``: the original code's cv2 order)."""
    if channel_order == "bgr":
        image = image[..., ::-1]
    return np.ascontiguousarray(image.transpose(2, 0, 1))
