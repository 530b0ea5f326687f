"""Miniature replicas of the public datasets' archives: the real structure, synthetic contents.

:func:`write_replica` writes, for one public source, archives with the official file names,
archive formats, folder layouts, member names, file formats and sample counts, but tiny images
with made-up contents. They go through the pipeline's real path (``segmia download`` verifies and
unpacks them when ``download.checksums`` names their digests, ``segmia prepare`` converts them),
so a rehearsal of the full configuration on a CPU meets the real datasets' structure: 131
patients, per-city groups, unequal image sizes, the slice cap, macOS junk members, and so on.

What is real (as far as the published descriptions and the archives' listings go):

- **MSD Task03 Liver** (``Task03_Liver.tar``, an uncompressed tar of gzipped NIfTI-1 files):
  ``Task03_Liver/dataset.json`` with the real keys (labels 0 background, 1 liver, 2 cancer;
  131 training pairs, 70 test images), ``imagesTr/liver_0..130.nii.gz`` (int16 Hounsfield units),
  ``labelsTr/`` under the same names (uint8 0/1/2), ``imagesTs/liver_132..201.nii.gz``
  (unlabelled), AppleDouble ``._*`` members beside some files. Slice counts spread over the
  published range 74..987 (both extremes present, about 58 000 training slices in all); the
  liver on a contiguous 25-40 % of each volume's slices (far more than the study's 5000-slice
  cap), tumours only inside the liver; in-plane spacing 0.70-0.90 mm, slice thickness 0.7-5 mm,
  most volumes stored in LPS voxel order (negative-diagonal affine), some in RAS.
- **Kvasir-SEG** (``kvasir-seg.zip``): ``Kvasir-SEG/images/<id>.jpg`` and
  ``Kvasir-SEG/masks/<id>.jpg``, 1000 pairs, 25-character ids like the real ones, images of
  varying size and aspect, masks as JPEG (compression noise around 0 and 255), and
  ``Kvasir-SEG/kavsir_bboxes.json`` (the real file name, typo included) with each image's size
  and polyp bounding boxes.
- **Cityscapes** (``leftImg8bit_trainvaltest.zip``, ``gtFine_trainvaltest.zip``): the real
  cities and per-city image counts of train (2975) and val (500), a few images per test city,
  ``<city>_<seq:06d>_<frame:06d>`` names, RGB ``_leftImg8bit.png`` images (2:1 aspect), and per
  image ``_gtFine_labelIds.png`` (8-bit, label ids 0..33, every id somewhere in train),
  ``_gtFine_instanceIds.png`` (16-bit, id * 1000 + k for the classes with instances),
  ``_gtFine_color.png`` (the official palette) and ``_gtFine_polygons.json`` (the polygons the
  maps were rasterised from); the test maps are placeholders marking only ego vehicle, borders
  and out-of-ROI (the real test labels are withheld); ``README`` and ``license.txt`` at the top
  of both archives.

What is not: every voxel and pixel is synthetic (ellipses for body, lungs, spine, aorta, liver
and tumours with plausible Hounsfield units and noise; a textured mucosa with a polyp blob that
the mask outlines; street scenes drawn from polygons: sky, buildings, road, sidewalk, cars,
...), the images are tiny (``size`` options), physical extents do not match the spacings,
sequence/frame numbers and test-image ids are plausible, not the real ones, and the archives'
checksums are of course not the published ones (give them in ``download.checksums``).

Archives are deterministic: the same seed, options and library versions (numpy, Pillow, zlib,
nibabel) give byte-identical files (fixed member times and owners, gzip time 0), so their MD5
is stable. Each archive is written under a temporary name and renamed; an existing archive
with the same bytes is left untouched (its modification time too).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import stat
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import PUBLIC_SOURCES
from ..errors import DataError
from ..io import temp_beside
from .sources.cityscapes import TEST_CITY_SIZES, TRAIN_CITY_SIZES, VAL_CITY_SIZES

log = logging.getLogger("segmia")

#: member times: 2018-05-04 (MSD release), zip date for the zips
TAR_MTIME = 1525392000
ZIP_DATE = (2020, 1, 1, 0, 0, 0)


# --- archives -------------------------------------------------------------------------------------


def md5_of(path: str | os.PathLike) -> str:
    """``"md5:<hex>"`` of a file (the form ``download.checksums`` takes)."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return f"md5:{h.hexdigest()}"


class _Tar:
    """A tar written member by member, with fixed times, owners and modes (USTAR, like bsdtar)."""

    def __init__(self, tf: tarfile.TarFile):
        self.tf = tf

    @classmethod
    def open(cls, path: Path) -> tarfile.TarFile:
        return tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)

    def _info(self, name: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = TAR_MTIME, 0, 0, "", ""
        return info

    def folder(self, name: str) -> None:
        info = self._info(name.rstrip("/") + "/")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        self.tf.addfile(info)

    def add(self, name: str, data: bytes) -> None:
        info = self._info(name)
        info.size, info.mode = len(data), 0o644
        self.tf.addfile(info, io.BytesIO(data))


class _Zip:
    """A zip with folder entries before their files, fixed dates and Unix modes (like zip -r)."""

    def __init__(self, zf: zipfile.ZipFile):
        self.zf = zf
        self.folders: set[str] = set()

    @classmethod
    def open(cls, path: Path, level: int = 6) -> zipfile.ZipFile:
        return zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level)

    def _info(self, name: str, mode: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
        info.create_system = 3  # Unix
        info.external_attr = mode << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        return info

    def add(self, name: str, data: bytes) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i]) + "/"
            if folder not in self.folders:
                self.folders.add(folder)
                info = self._info(folder, stat.S_IFDIR | 0o755)
                info.external_attr |= 0x10  # MS-DOS directory flag
                info.compress_type = zipfile.ZIP_STORED
                self.zf.writestr(info, b"")
        self.zf.writestr(self._info(name, stat.S_IFREG | 0o644), data)


def _write_archives(
    out_dir: Path, names: tuple[str, ...], write: Callable[[dict[str, Path]], None]
) -> dict[str, str]:
    """Run ``write`` on temporary files beside ``out_dir/<name>``, then rename them into place
    (an archive already there with the same bytes is left alone); return their MD5s."""
    out_dir.mkdir(parents=True, exist_ok=True)
    temps = {name: temp_beside(out_dir / name) for name in names}
    try:
        write(temps)
        digests = {}
        for name, tmp in temps.items():
            dest = out_dir / name
            digests[name] = md5_of(tmp)
            if dest.is_file() and md5_of(dest) == digests[name]:
                log.info("%s: unchanged (%s)", dest, digests[name])
                continue
            os.replace(tmp, dest)
            log.info("wrote %s (%s)", dest, digests[name])
        return digests
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


# --- MSD Task03 Liver -----------------------------------------------------------------------------

LIVER_TASK = "Task03_Liver"
LIVER_TRAINING = 131
LIVER_TEST = 70
#: the test volumes are numbered on from 132 (there is no liver_131)
LIVER_TEST_FIRST = 132
#: the published range of slices per volume (LiTS / MSD Task03)
LIVER_SLICES = (74, 987)
#: the first volumes (one centre) have thick slices and few of them
LIVER_THICK = 28


def _apple_double(name: str) -> bytes:
    """A macOS AppleDouble ``._name`` file (Finder info, padded to 4 KiB as macOS writes it)."""
    header = struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 1)
    entry = struct.pack(">III", 9, 38, 32)  # Finder info: offset 38, 32 bytes
    finder = b"\0" * 32
    blob = header + entry + finder
    return blob + b"\0" * (4096 - len(blob))


def _liver_plans(rng: np.random.Generator, training: int, test: int) -> list[dict]:
    """Per volume: slice count, spacing, orientation and anatomy parameters."""
    count = training + test
    slices = np.empty(count, dtype=np.int64)
    thick = np.zeros(count, dtype=bool)
    thick[: min(LIVER_THICK, training)] = True
    slices[thick] = rng.integers(LIVER_SLICES[0], 261, thick.sum())
    slices[~thick] = np.rint(rng.triangular(200, 400, LIVER_SLICES[1], (~thick).sum()))
    slices = np.clip(slices, *LIVER_SLICES)
    # both published extremes occur among the labelled volumes
    low = int(rng.integers(0, min(LIVER_THICK, training)))
    high = int(rng.integers(min(LIVER_THICK, training), training))
    slices[low], slices[high] = LIVER_SLICES
    plans = []
    for i in range(count):
        n = int(slices[i])
        if thick[i]:
            thickness = float(rng.choice([2.5, 3.0, 4.0, 5.0]))
        else:
            choices = np.array([0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0])
            thickness = float(choices[np.argmin(np.abs(choices - rng.uniform(250, 520) / n))])
        liver = int(round(rng.uniform(0.25, 0.40) * n))
        top = n - int(round(rng.uniform(0.05, 0.35) * (n - liver)))  # first slice above the liver
        tumours = []
        k = 0 if rng.random() < 0.1 else min(int(rng.geometric(0.45)), 6)
        hu_liver = float(rng.uniform(60, 120))
        for _ in range(k):
            tumours.append(
                {
                    "t": rng.uniform(0.2, 0.85),
                    "dz": rng.uniform(0.02, 0.08),
                    "u": rng.uniform(-0.5, 0.5),
                    "v": rng.uniform(-0.5, 0.5),
                    "r": rng.uniform(0.03, 0.09),
                    "hu": hu_liver
                    + (rng.uniform(-60, -30) if rng.random() < 0.7 else rng.uniform(30, 70)),
                }
            )
        plans.append(
            {
                "slices": n,
                "spacing": float(rng.integers(360, 461)) / 512,  # field of view / 512 columns
                "thickness": thickness,
                "lps": bool(rng.random() < 0.85),
                "origin_z": -float(rng.uniform(250, 700)),
                "pad": [None, -1024, -2048, -3024][int(rng.integers(4))],
                "liver": (top - liver, top),
                "hu_liver": hu_liver,
                "hu_soft": float(rng.uniform(35, 55)),
                "hu_bone": float(rng.uniform(350, 700)),
                "hu_aorta": float(rng.uniform(120, 260)),
                "noise": float(rng.uniform(6, 12)),
                "body": (rng.uniform(0.38, 0.45), rng.uniform(0.30, 0.36)),
                "tumours": tumours,
                "junk": bool(rng.random() < 0.3),
            }
        )
    return plans


def _ellipse(x, y, cx, cy, rx, ry):
    """Inside the ellipse (none where a radius is not positive)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1) & (rx > 0) & (ry > 0)


def _liver_masks(x, y, z, plan: dict, size: int, erode: float = 0.0) -> np.ndarray:
    """Liver (right lobe and, higher up, the left lobe) on the slices ``z``; ``erode`` voxels
    taken off every radius."""
    z0, z1 = plan["liver"]
    t = (z - z0 + 0.5) / (z1 - z0)
    inside = (t > 0) & (t < 1)
    t = np.clip(t, 0, 1)
    s = 0.08 + 0.92 * np.sin(np.pi * t) ** 0.8  # small at the tip and the dome
    e = erode / size
    right = _ellipse(x, y, 0.66 + 0.03 * (1 - t), 0.5, 0.19 * s - e, 0.2 * s - e)
    s2 = np.where(t > 0.45, np.sin(np.pi * np.clip((t - 0.45) / 0.55, 0, 1)) ** 0.8, 0.0)
    left = (s2 > 0) & _ellipse(x, y, 0.45, 0.58, 0.14 * s2 - e, 0.09 * s2 - e)
    return (right | left) & inside


def _liver_volume(plan: dict, size: int, rng: np.random.Generator, label: bool):
    """(image int16 HU, label uint8 or None), X x Y x Z in RAS voxel order."""
    nz = plan["slices"]
    x = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None, None]
    y = ((np.arange(size, dtype=np.float32) + 0.5) / size)[None, :, None]
    z = np.arange(nz, dtype=np.float32)[None, None, :]
    bx, by = plan["body"]
    wobble = 1 + 0.04 * np.sin(z / max(nz, 1) * 2 * np.pi)
    body = _ellipse(x, y, 0.5, 0.47, bx * wobble, by * wobble)
    muscle = _ellipse(x, y, 0.5, 0.47, bx * wobble - 0.04, by * wobble - 0.04)
    hu = np.full((size, size, nz), -1000.0, dtype=np.float32)
    hu[body] = -100.0  # subcutaneous fat
    hu[muscle] = plan["hu_soft"]
    z0, z1 = plan["liver"]
    base = z1 - round(0.25 * (z1 - z0))  # the lung bases reach down beside the liver's dome
    g = np.clip((z - base) / (0.1 * nz + 5), 0, 1)
    lungs = (g > 0) & (
        _ellipse(x, y, 0.3, 0.5, 0.12 * g + 0.02, 0.17 * g + 0.02)
        | _ellipse(x, y, 0.7, 0.5, 0.12 * g + 0.02, 0.17 * g + 0.02)
    )
    hu[lungs & muscle] = -850.0
    hu[(g > 0.5) & _ellipse(x, y, 0.45, 0.6, 0.13 * g, 0.11 * g)] = plan["hu_soft"]  # heart
    hu[np.broadcast_to(_ellipse(x, y, 0.5, 0.23, 0.07, 0.07), hu.shape)] = plan["hu_bone"]
    hu[np.broadcast_to(_ellipse(x, y, 0.45, 0.34, 0.035, 0.035), hu.shape)] = plan["hu_aorta"]
    sub = slice(z0, z1)
    zs = z[:, :, sub]
    liver = _liver_masks(x, y, zs, plan, size)
    inner = _liver_masks(x, y, zs, plan, size, erode=1.5)
    block = hu[:, :, sub]
    block[liver] = plan["hu_liver"]
    tumour = np.zeros_like(liver)
    length = z1 - z0
    for tm in plan["tumours"]:
        zc, rz = tm["t"] * length, max(1.0, tm["dz"] * length)
        ball = (
            ((x - (0.66 + tm["u"] * 0.19)) / tm["r"]) ** 2
            + ((y - (0.5 + tm["v"] * 0.2)) / tm["r"]) ** 2
            + ((zs - z0 - zc) / rz) ** 2
        ) <= 1
        ball &= inner
        block[ball] = tm["hu"]
        tumour |= ball
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(plan["noise"])
    if plan["pad"] is not None:  # outside the reconstructed circle
        hu[np.broadcast_to(~_ellipse(x, y, 0.5, 0.5, 0.5, 0.5), hu.shape)] = plan["pad"]
    image = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    if not label:
        return image, None
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[:, :, sub][liver] = 1
    mask[:, :, sub][tumour] = 2
    return image, mask


def _nifti_gz(data: np.ndarray, plan: dict, level: int) -> bytes:
    """A .nii.gz of an RAS-ordered array, stored in LPS order (x, y flipped) when the plan says."""
    import nibabel as nib

    size = data.shape[0]
    sx = sy = plan["spacing"]
    half = sx * (size - 1) / 2
    if plan["lps"]:
        data = data[::-1, ::-1]
        affine = np.diag([-sx, -sy, plan["thickness"], 1.0])
        affine[:3, 3] = [half, half, plan["origin_z"]]
    else:
        affine = np.diag([sx, sy, plan["thickness"], 1.0])
        affine[:3, 3] = [-half, -half, plan["origin_z"]]
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return gzip.compress(img.to_bytes(), compresslevel=level, mtime=0)


def liver_dataset_json() -> dict:
    """The replica's ``dataset.json``: the real keys, values and pair lists."""
    training, test = LIVER_TRAINING, LIVER_TEST
    return {
        "name": "Liver",
        "description": "Liver and tumor segmentation (segmia replica: synthetic volumes)",
        "reference": "https://competitions.codalab.org/competitions/17094",
        "licence": "CC-BY-SA 4.0",
        "relase": "1.0 04/05/2018",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": training,
        "numTest": test,
        "training": [
            {"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"}
            for i in range(training)
        ],
        "test": [f"./imagesTs/liver_{LIVER_TEST_FIRST + i}.nii.gz" for i in range(test)],
    }


def write_liver(out_dir: Path, seed: int = 0, size: int = 32, gzip_level: int = 1) -> dict:
    """``Task03_Liver.tar``: 131 labelled and 70 test volumes of ``size`` x ``size`` voxels."""
    if size < 8 or not 0 <= gzip_level <= 9:
        raise DataError(
            f"replica size {size}, gzip_level {gzip_level}: the liver replica needs at least "
            "8 x 8 voxels and a gzip level 0..9."
        )
    rng = np.random.default_rng([seed, 3])
    plans = _liver_plans(rng, LIVER_TRAINING, LIVER_TEST)
    meta = json.dumps(liver_dataset_json(), indent=4).encode()
    root = LIVER_TASK

    def write(paths: dict[str, Path]) -> None:
        with _Tar.open(paths[f"{LIVER_TASK}.tar"]) as tf:
            tar = _Tar(tf)
            tar.folder(root)
            tar.add(f"{root}/._dataset.json", _apple_double("dataset.json"))
            tar.add(f"{root}/dataset.json", meta)
            labels = {}
            for folder, first, count in (
                ("imagesTr", 0, LIVER_TRAINING),
                ("imagesTs", LIVER_TRAINING, LIVER_TEST),
            ):
                tar.folder(f"{root}/{folder}")
                for i in range(first, first + count):
                    plan = plans[i]
                    vrng = np.random.default_rng([seed, 3, i])
                    image, label = _liver_volume(plan, size, vrng, label=folder == "imagesTr")
                    number = i if i < LIVER_TRAINING else LIVER_TEST_FIRST + i - LIVER_TRAINING
                    name = f"liver_{number}.nii.gz"
                    if plan["junk"]:
                        tar.add(f"{root}/{folder}/._{name}", _apple_double(name))
                    tar.add(f"{root}/{folder}/{name}", _nifti_gz(image, plan, gzip_level))
                    if label is not None:
                        labels[name] = _nifti_gz(label, plan, gzip_level)
                if folder == "imagesTr":  # the labels after the training images
                    tar.folder(f"{root}/labelsTr")
                    for i in range(LIVER_TRAINING):
                        name = f"liver_{i}.nii.gz"
                        if plans[i]["junk"]:
                            tar.add(f"{root}/labelsTr/._{name}", _apple_double(name))
                        tar.add(f"{root}/labelsTr/{name}", labels.pop(name))

    return _write_archives(Path(out_dir), (f"{LIVER_TASK}.tar",), write)


# --- Kvasir-SEG -----------------------------------------------------------------------------------

KVASIR_ROOT = "Kvasir-SEG"
KVASIR_COUNT = 1000
ID_ALPHABET = np.array(list("0123456789abcdefghijklmnopqrstuvwxyz"))


def kvasir_ids(rng: np.random.Generator, count: int = KVASIR_COUNT) -> list[str]:
    """25-character ids like the real ones (``cju0qkwl35piu0993l0dewei2``; a few ``ck2...``)."""
    ids: set[str] = set()
    while len(ids) < count:
        prefix = "cju" if rng.random() < 0.97 else "ck2"
        ids.add(prefix + "".join(ID_ALPHABET[rng.integers(0, 36, 22)]))
    return sorted(ids)


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _blob(xx, yy, cx, cy, r, rng) -> np.ndarray:
    """An irregular roundish region (radius modulated by low harmonics of the angle)."""
    angle = np.arctan2(yy - cy, xx - cx)
    radius = np.full_like(angle, r)
    for k in (2, 3, 5):
        radius *= 1 + rng.uniform(0.0, 0.18 / k * 2) * np.cos(k * angle - rng.uniform(0, 2 * np.pi))
    return np.hypot((xx - cx) * rng.uniform(0.8, 1.2), yy - cy) <= radius


def _kvasir_pair(rng: np.random.Generator, min_side: int, max_side: int):
    width = int(rng.integers(min_side, max_side + 1))
    aspect = rng.uniform(1.0, 1.6) if rng.random() < 0.85 else rng.uniform(0.75, 1.0)
    height = int(np.clip(round(width / aspect), min_side, max_side))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # polyps: usually one, sometimes two or three
    mask = np.zeros((height, width), dtype=bool)
    boxes = []
    for _ in range(1 if rng.random() < 0.9 else int(rng.integers(2, 4))):
        frac = 0.02 + 0.4 * rng.random() ** 1.7
        r = np.sqrt(frac * width * height / np.pi) / (1 if not boxes else 1.8)
        cx = rng.uniform(0.25, 0.75) * width
        cy = rng.uniform(0.25, 0.75) * height
        blob = _blob(xx, yy, cx, cy, r, rng)
        if not blob.any():
            blob[int(cy), int(cx)] = True
        mask |= blob
        rows, cols = np.nonzero(blob)
        boxes.append(
            {
                "label": "polyp",
                "xmin": int(cols.min()),
                "ymin": int(rows.min()),
                "xmax": int(cols.max()),
                "ymax": int(rows.max()),
            }
        )
    # mucosa: a pinkish red surface lit from a point, a dark lumen, faint vessels
    base = np.array([rng.uniform(150, 225), rng.uniform(60, 115), rng.uniform(50, 95)])
    lx, ly = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    light = 0.55 + 0.5 * np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * (0.45 * width) ** 2))
    dx, dy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
    lumen = 1 - 0.8 * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * (0.12 * width) ** 2))
    vessels = 1 + 0.06 * np.sin(xx * rng.uniform(0.2, 0.6) + np.sin(yy * rng.uniform(0.1, 0.4)) * 3)
    shade = light * lumen * vessels
    image = base[None, None, :] * shade[..., None]
    # the polyp: paler or redder, brighter towards its top, a specular highlight
    tint = np.array([rng.uniform(1.0, 1.2), rng.uniform(1.05, 1.5), rng.uniform(1.0, 1.4)])
    image[mask] = image[mask] * tint * 1.1
    hx, hy = boxes[0]["xmin"], boxes[0]["ymin"]
    hx = (hx + boxes[0]["xmax"]) / 2 + rng.uniform(-0.2, 0.2) * (boxes[0]["xmax"] - hx + 1)
    hy = (hy + boxes[0]["ymax"]) / 2 - 0.2 * (boxes[0]["ymax"] - hy + 1)
    spot = mask & (((xx - hx) ** 2 + (yy - hy) ** 2) <= max(1.0, 0.002 * width * height))
    image[spot] = 250
    image += rng.normal(0, 4, image.shape)
    # the endoscope's round field of view: black corners
    corner = ((xx - width / 2) / (0.58 * width)) ** 2 + (
        (yy - height / 2) / (0.6 * height)
    ) ** 2 > 1
    image[corner] = rng.uniform(0, 6)
    if rng.random() < 0.35:  # the ScopeGuide position box at the bottom left
        side = max(4, int(0.25 * min(width, height)))
        image[height - side :, :side] = (0, 0, 0)
        image[height - side + 1 : height - 1, 2 : side // 2 + 1] = (40, 160, 60)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    grey = np.where(mask, 255, 0).astype(np.uint8)
    masks = np.repeat(grey[..., None], 3, axis=2)  # the masks are 3-channel grey JPEGs
    return (
        _encode(image, "JPEG", quality=int(rng.integers(80, 96))),
        _encode(masks, "JPEG", quality=int(rng.integers(75, 96))),
        {"height": height, "width": width, "bbox": boxes},
    )


def write_kvasir(
    out_dir: Path, seed: int = 0, min_side: int = 40, max_side: int = 96, count: int = KVASIR_COUNT
) -> dict:
    """``kvasir-seg.zip``: ``count`` (1000) image/mask pairs of ``min_side``..``max_side`` px."""
    if not 8 <= min_side <= max_side or count < 1:
        raise DataError(
            f"replica sides {min_side}..{max_side}, count {count}: need 8 <= min_side <= "
            "max_side (pixels) and at least one image."
        )
    rng = np.random.default_rng([seed, 5])
    ids = kvasir_ids(rng, count)

    def write(paths: dict[str, Path]) -> None:
        with _Zip.open(paths["kvasir-seg.zip"]) as zf:
            archive = _Zip(zf)
            masks, boxes = {}, {}
            for sid in ids:
                image, masks[sid], boxes[sid] = _kvasir_pair(rng, min_side, max_side)
                archive.add(f"{KVASIR_ROOT}/images/{sid}.jpg", image)
            for sid in ids:
                archive.add(f"{KVASIR_ROOT}/masks/{sid}.jpg", masks[sid])
            archive.add(f"{KVASIR_ROOT}/kavsir_bboxes.json", json.dumps(boxes).encode())

    return _write_archives(Path(out_dir), ("kvasir-seg.zip",), write)


# --- Cityscapes -----------------------------------------------------------------------------------

#: cityscapesscripts labels.py: (name, label id, has instances, colour), ids 0..33
CITY_LABELS = [
    ("unlabeled", 0, False, (0, 0, 0)),
    ("ego vehicle", 1, False, (0, 0, 0)),
    ("rectification border", 2, False, (0, 0, 0)),
    ("out of roi", 3, False, (0, 0, 0)),
    ("static", 4, False, (0, 0, 0)),
    ("dynamic", 5, False, (111, 74, 0)),
    ("ground", 6, False, (81, 0, 81)),
    ("road", 7, False, (128, 64, 128)),
    ("sidewalk", 8, False, (244, 35, 232)),
    ("parking", 9, False, (250, 170, 160)),
    ("rail track", 10, False, (230, 150, 140)),
    ("building", 11, False, (70, 70, 70)),
    ("wall", 12, False, (102, 102, 156)),
    ("fence", 13, False, (190, 153, 153)),
    ("guard rail", 14, False, (180, 165, 180)),
    ("bridge", 15, False, (150, 100, 100)),
    ("tunnel", 16, False, (150, 120, 90)),
    ("pole", 17, False, (153, 153, 153)),
    ("polegroup", 18, False, (153, 153, 153)),
    ("traffic light", 19, False, (250, 170, 30)),
    ("traffic sign", 20, False, (220, 220, 0)),
    ("vegetation", 21, False, (107, 142, 35)),
    ("terrain", 22, False, (152, 251, 152)),
    ("sky", 23, False, (70, 130, 180)),
    ("person", 24, True, (220, 20, 60)),
    ("rider", 25, True, (255, 0, 0)),
    ("car", 26, True, (0, 0, 142)),
    ("truck", 27, True, (0, 0, 70)),
    ("bus", 28, True, (0, 60, 100)),
    ("caravan", 29, True, (0, 0, 90)),
    ("trailer", 30, True, (0, 0, 110)),
    ("train", 31, True, (0, 80, 100)),
    ("motorcycle", 32, True, (0, 0, 230)),
    ("bicycle", 33, True, (119, 11, 32)),
]
CITY_IDS = {name: i for name, i, _, _ in CITY_LABELS}
#: what the camera sees (an RGB per label id; shading and noise are added)
PHOTO = np.array(
    [
        (60, 60, 60), (30, 30, 35), (0, 0, 0), (10, 10, 10), (100, 90, 80), (110, 80, 40),
        (100, 90, 100), (85, 85, 90), (140, 135, 130), (120, 110, 110), (95, 85, 80),
        (105, 100, 95), (120, 115, 105), (110, 100, 90), (150, 150, 150), (110, 100, 100),
        (60, 55, 50), (90, 90, 90), (95, 95, 95), (40, 40, 40), (200, 200, 60), (55, 85, 35),
        (120, 130, 70), (160, 190, 220), (120, 60, 60), (100, 50, 60), (40, 50, 90),
        (70, 70, 80), (170, 150, 60), (180, 180, 170), (150, 140, 120), (140, 140, 60),
        (60, 60, 120), (110, 30, 40),
    ],
    dtype=np.float32,
)  # fmt: skip
PALETTE = np.array([c for _, _, _, c in CITY_LABELS] + [(0, 0, 0)] * 222, dtype=np.uint8)
#: cities recorded as long drives (a few sequences, varied frame numbers); the others as
#: 30-frame snippets with the annotated 20th frame (``<seq>_000019``). Plausible, not exact.
DRIVE_CITIES = {
    "bochum", "hamburg", "hanover", "krefeld", "monchengladbach", "strasbourg", "frankfurt",
    "bielefeld", "mainz",
}  # fmt: skip
LICENSE = (
    b"Synthetic replica; the real data's licence: https://www.cityscapes-dataset.com/license/\n"
)
README = (
    b"Cityscapes replica written by segmia: the layout, file names and per-city image counts of\n"
    b"the official archive, with tiny synthetic images (not the Cityscapes data).\n"
)


def city_stems(rng: np.random.Generator, city: str, count: int) -> list[str]:
    """``<city>_<seq:06d>_<frame:06d>`` names of ``count`` annotated frames."""
    if city not in DRIVE_CITIES:
        return [f"{city}_{seq:06d}_000019" for seq in range(count)]
    stems, seq, frame = [], 0, int(rng.integers(0, 60))
    for _ in range(count):
        stems.append(f"{city}_{seq:06d}_{frame:06d}")
        frame += int(rng.integers(15, 160))
        if frame > 999_999 or rng.random() < 0.02:
            seq, frame = seq + 1, int(rng.integers(0, 60))
    return stems


class _Scene:
    """Label ids and instance ids drawn from polygons (the way json2labelImg rasterises)."""

    def __init__(self, width: int, height: int):
        from PIL import Image, ImageDraw

        self.w, self.h = width, height
        self.labels = Image.new("L", (width, height), 0)
        self.instances = Image.new("I", (width, height), 0)
        self.draw_l, self.draw_i = ImageDraw.Draw(self.labels), ImageDraw.Draw(self.instances)
        self.objects: list[dict] = []
        self.counts: dict[int, int] = {}

    def add(self, name: str, points) -> None:
        """A polygon in unit coordinates (0..1 across and down)."""
        label, _, instances, _ = CITY_LABELS[CITY_IDS[name]]
        w, h = self.w - 1, self.h - 1
        poly = [
            (round(min(max(float(u), 0.0), 1.0) * w), round(min(max(float(v), 0.0), 1.0) * h))
            for u, v in points
        ]
        if instances:
            k = self.counts.get(CITY_IDS[name], 0)
            self.counts[CITY_IDS[name]] = k + 1
            value = CITY_IDS[name] * 1000 + k
        else:
            value = CITY_IDS[name]
        self.draw_l.polygon(poly, fill=CITY_IDS[name])
        self.draw_i.polygon(poly, fill=value)
        self.objects.append({"label": label, "polygon": [list(p) for p in poly]})

    def rect(self, name: str, u0, v0, u1, v1) -> None:
        self.add(name, [(u0, v0), (u1, v0), (u1, v1), (u0, v1)])

    def arrays(self):
        return np.asarray(self.labels), np.asarray(self.instances).astype(np.uint16)


def _borders(scene: _Scene, rng: np.random.Generator) -> None:
    """Ego vehicle (the car's bonnet), out-of-ROI corners, the rectification border."""
    top = rng.uniform(0.82, 0.92)
    scene.add("ego vehicle", [(0.0, 1.0), (0.12, top), (0.88, top), (1.0, 1.0)])
    scene.add("out of roi", [(0.0, 0.9), (0.08, 1.0), (0.0, 1.0)])
    scene.add("out of roi", [(1.0, 0.9), (0.92, 1.0), (1.0, 1.0)])
    scene.rect("rectification border", 0.0, 0.0, 0.0, 1.0)
    scene.rect("rectification border", 1.0, 0.0, 1.0, 1.0)


def _street(scene: _Scene, rng: np.random.Generator) -> None:
    """A plausible street: sky, buildings, trees, road and sidewalks, things and traffic."""
    hz = rng.uniform(0.38, 0.5)  # horizon
    vx = rng.uniform(0.35, 0.65)  # vanishing point
    chance = rng.random
    scene.rect("sky", 0, 0, 1, hz - rng.uniform(0.03, 0.1))  # unlabeled gaps at the horizon
    if chance() < 0.02:
        scene.add(
            "tunnel", [(0, 0), (1, 0), (1, hz + 0.1), (0.8, 0.12), (0.2, 0.12), (0, hz + 0.1)]
        )
    for side in (0, 1):
        edge = rng.uniform(0.2, 0.45)
        u0, u1 = (0, edge) if side == 0 else (1 - edge, 1)
        steps = int(rng.integers(1, 4))
        cuts = np.linspace(u0, u1, steps + 1)
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            scene.rect("building", a, rng.uniform(0.0, 0.25), b, hz + 0.05)
    if chance() < 0.5:
        scene.rect("building", vx - 0.1, hz - rng.uniform(0.05, 0.15), vx + 0.1, hz)
    if chance() < 0.05:
        scene.rect("bridge", 0, 0.12, 1, 0.2)
    for _ in range(int(rng.integers(0, 4))):
        cu, cv, r = rng.uniform(0, 1), rng.uniform(0.15, hz), rng.uniform(0.05, 0.15)
        angles = np.linspace(0, 2 * np.pi, 9)[:-1]
        scene.add("vegetation", [(cu + r * np.cos(a), cv + 2 * r * np.sin(a)) for a in angles])
    if chance() < 0.3:
        u = rng.uniform(0, 0.7)
        scene.rect("wall", u, hz - 0.04, u + rng.uniform(0.1, 0.3), hz + 0.06)
    scene.rect("sidewalk", 0, hz, 1, 1)
    spread = rng.uniform(0.1, 0.3)
    scene.add("road", [(vx - 0.02, hz), (vx + 0.02, hz), (1 - spread + 0.3, 1), (spread - 0.3, 1)])
    for name, p in (("terrain", 0.4), ("parking", 0.15), ("ground", 0.2)):
        if chance() < p:
            u = rng.choice([rng.uniform(0, 0.15), rng.uniform(0.75, 0.9)])
            scene.rect(name, u, hz + 0.02, u + 0.1, hz + rng.uniform(0.1, 0.3))
    if chance() < 0.06:
        scene.add("rail track", [(vx - 0.01, hz), (vx + 0.01, hz), (vx + 0.15, 1), (vx - 0.05, 1)])
    if chance() < 0.3:
        scene.rect("fence", 0, hz - 0.02, rng.uniform(0.1, 0.3), hz + 0.08)
    if chance() < 0.1:
        scene.rect("guard rail", 1 - rng.uniform(0.15, 0.4), hz + 0.02, 1, hz + 0.07)
    for name, p in (("static", 0.3), ("dynamic", 0.2)):
        if chance() < p:
            u = rng.uniform(0.02, 0.9)
            scene.rect(name, u, hz + 0.05, u + 0.05, hz + 0.15)
    for _ in range(int(rng.integers(1, 4))):  # poles, with a light or a sign on top
        u = rng.choice([rng.uniform(0.02, 0.3), rng.uniform(0.7, 0.98)])
        top = rng.uniform(0.1, hz - 0.05)
        scene.rect("pole", u, top, u + 0.01, hz + 0.12)
        if chance() < 0.4:
            scene.rect("traffic light", u - 0.01, top, u + 0.02, top + 0.1)
        elif chance() < 0.6:
            scene.rect("traffic sign", u - 0.02, top, u + 0.03, top + 0.06)
    if chance() < 0.1:
        u = rng.uniform(0.05, 0.9)
        scene.rect("polegroup", u, 0.2, u + 0.04, hz + 0.1)
    vehicles = [("car", 0.9)] * 4 + [
        ("truck", 0.15), ("bus", 0.1), ("caravan", 0.04), ("trailer", 0.04), ("train", 0.03),
    ]  # fmt: skip
    for name, p in vehicles:
        if chance() < p:
            d = rng.uniform(0.05, 1)  # nearness: 0 at the horizon, 1 at the camera
            v1 = hz + d * (0.85 - hz)
            w = 0.06 + 0.3 * d * (1.6 if name in ("bus", "truck", "train") else 1)
            u = vx + rng.uniform(-0.6, 0.6) * d - w / 2
            scene.rect(name, u, v1 - w * 0.9, u + w, v1)
    for name, p in (("motorcycle", 0.1), ("bicycle", 0.25)):
        if chance() < p:
            u, d = rng.uniform(0.05, 0.9), rng.uniform(0.1, 0.8)
            v1 = hz + d * (0.85 - hz)
            scene.rect(name, u, v1 - 0.06 - 0.1 * d, u + 0.04 + 0.08 * d, v1)
            if chance() < 0.8:
                scene.rect("rider", u + 0.01, v1 - 0.2 - 0.2 * d, u + 0.03 + 0.05 * d, v1 - 0.05)
    for _ in range(int(rng.integers(0, 4))):
        u, d = rng.choice([rng.uniform(0, 0.25), rng.uniform(0.7, 0.98)]), rng.uniform(0.1, 0.8)
        v1 = hz + d * (0.85 - hz)
        scene.rect("person", u, v1 - 0.12 - 0.3 * d, u + 0.02 + 0.04 * d, v1)
    _borders(scene, rng)


def _city_photo(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height = labels.shape[0]
    image = PHOTO[labels] * np.float32(rng.uniform(0.7, 1.2))
    image *= (0.9 + 0.2 * np.arange(height, dtype=np.float32) / height)[:, None, None]
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    image[labels == CITY_IDS["rectification border"]] = 0
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _city_sample(
    rng: np.random.Generator, split: str, width: int, height: int, extras: bool
) -> tuple[bytes, dict[str, bytes]]:
    """The PNG of one image and its ground-truth files (suffix after ``_gtFine_`` -> bytes)."""
    scene = _Scene(width, height)
    if split == "test":  # the photo shows a street, the withheld labels only the borders
        shown = _Scene(width, height)
        _street(shown, rng)
        photo = _city_photo(shown.arrays()[0], rng)
        _borders(scene, rng)
    else:
        _street(scene, rng)
        photo = _city_photo(scene.arrays()[0], rng)
    labels, instances = scene.arrays()
    gt = {}
    if extras:
        alpha = np.full((*labels.shape, 1), 255, np.uint8)
        gt["color.png"] = _encode(np.concatenate([PALETTE[labels], alpha], axis=2), "PNG")
        gt["instanceIds.png"] = _encode(instances, "PNG")
    gt["labelIds.png"] = _encode(labels, "PNG")
    if extras:
        polygons = {"imgHeight": height, "imgWidth": width, "objects": scene.objects}
        gt["polygons.json"] = json.dumps(polygons).encode()
    return _encode(photo, "PNG"), gt


def write_cityscapes(
    out_dir: Path,
    seed: int = 0,
    width: int = 64,
    height: int = 32,
    test_per_city: int | None = 2,
    extras: bool = True,
) -> dict:
    """``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` of ``width`` x ``height``
    images; ``test_per_city``: images per test city (None: the real 1525); ``extras``: also the
    colour and instance maps and the polygons (else the label-id maps only)."""
    if width < 16 or height < 8 or (test_per_city is not None and test_per_city < 0):
        raise DataError(
            f"replica size {width}x{height}, test_per_city {test_per_city}: need at least "
            "16 x 8 pixels and test_per_city >= 0 (or null: the real counts)."
        )
    rng = np.random.default_rng([seed, 7])
    left_name, fine_name = "leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"
    test = {
        c: (n if test_per_city is None else min(n, test_per_city))
        for c, n in TEST_CITY_SIZES.items()
    }

    def write(paths: dict[str, Path]) -> None:
        with (
            _Zip.open(paths[left_name], level=1) as left_zf,
            _Zip.open(paths[fine_name], level=1) as fine_zf,
        ):
            left, fine = _Zip(left_zf), _Zip(fine_zf)
            for zf, what in ((left, b"leftImg8bit"), (fine, b"gtFine")):
                zf.add("README", README.replace(b"archive", what + b" archive", 1))
                zf.add("license.txt", LICENSE)
            for split, cities in (
                ("train", TRAIN_CITY_SIZES),
                ("val", VAL_CITY_SIZES),
                ("test", test),
            ):
                for city, count in cities.items():
                    for stem in city_stems(rng, city, count):
                        photo, gt = _city_sample(rng, split, width, height, extras)
                        left.add(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", photo)
                        for suffix, data in gt.items():
                            fine.add(f"gtFine/{split}/{city}/{stem}_gtFine_{suffix}", data)

    return _write_archives(Path(out_dir), (left_name, fine_name), write)


# --- entry point ----------------------------------------------------------------------------------

WRITERS: dict[str, Callable[..., dict]] = {
    "liver": write_liver,
    "kvasir": write_kvasir,
    "cityscapes": write_cityscapes,
}
#: size options per source (keyword arguments of the writers besides out_dir and seed): types
OPTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "liver": {"size": (int,), "gzip_level": (int,)},
    "kvasir": {"min_side": (int,), "max_side": (int,), "count": (int,)},
    "cityscapes": {
        "width": (int,),
        "height": (int,),
        "test_per_city": (int, type(None)),
        "extras": (bool,),
    },
}


def write_replica(source: str, out_dir: str | Path, seed: int = 0, **options) -> dict[str, str]:
    """Write the replica archives of ``source`` (one of :data:`segmia.config.PUBLIC_SOURCES`)
    into ``out_dir``; return ``{archive file name: "md5:<hex>"}`` (for ``download.checksums``).

    ``options`` (tiny defaults): liver ``size`` (32: in-plane voxels), ``gzip_level`` (1);
    kvasir ``min_side``/``max_side`` (40/96 px), ``count`` (1000); cityscapes ``width``/
    ``height`` (64/32 px), ``test_per_city`` (2; None: the real counts), ``extras`` (True: colour
    and instance maps and polygons besides the label-id maps).
    """
    if source not in PUBLIC_SOURCES:
        raise DataError(
            f"no replica for {source!r}: the public sources are {', '.join(PUBLIC_SOURCES)}."
        )
    unknown = sorted(set(options) - set(OPTIONS[source]))
    if unknown:
        raise DataError(
            f"replica option(s) {', '.join(unknown)} do not apply to {source}; its options: "
            f"{', '.join(OPTIONS[source])}."
        )
    for key, value in options.items():
        kinds = OPTIONS[source][key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise DataError(
                f"replica option {key}: {value!r} is not "
                f"{' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}."
            )
    return WRITERS[source](Path(out_dir), seed, **options)
