"""Medical Segmentation Decathlon, Task03 Liver: 131 labelled abdominal CT volumes (NIfTI).

Preparation (docs/protocol.md, "Datasets": 2-D axial slices, 256 x 256, one channel, liver and
tumour merged):

1. Each volume is read with MONAI (``LoadImage``) and reoriented to RAS (``Orientation``), so
   every patient's slices come out the same way up whatever the file's voxel order.
2. Axial slices are shown in the radiological convention: anterior at the top, the patient's
   right on the image's left.
3. Hounsfield units are clipped to ``hu_window`` and scaled linearly to 0..255. Default
   [-100, 400] HU: liver parenchyma (about 40-70 HU unenhanced, 100-150 HU in the portal venous
   phase), contrast-filled vessels and hypo- or hyper-dense lesions all fall inside it with room
   to spare, while air, lung and fat (below -100) go to black and bone to white, so the 8-bit
   range is spent on the soft tissue that matters; it is a common window for liver and
   liver-tumour segmentation (LiTS, from which MSD Task03 comes). The study's code does not
   say how its slices were windowed.
4. Which slices: ``slices: foreground`` keeps the slices with at least ``min_foreground_pixels``
   liver or tumour pixels in the mask at the prepared resolution (the default; counted after the
   resize of step 6, so no kept slice reaches a model with an empty mask; the study's 5000
   slices were drawn from its volumes, most of which do not show the liver), ``all`` keeps every
   slice.
5. Labels 1 (liver) and 2 (tumour) become one foreground class; anything but 0, 1, 2 is an error.
6. Slices are resized to ``height`` x ``width`` (bilinear images, nearest-neighbour masks).
7. At most ``max_slices`` slices are kept (the study: 5000), chosen with ``seed`` either
   spread over every patient in proportion to its candidate slices (``selection: spread``,
   default: more patients, so the group-aware split has many groups), or as whole patients in a
   seeded order with the last one trimmed to its central slices (``selection: patients``).

Group id = patient, so the split never puts slices of one patient in two pools or roles.
Volumes are processed one at a time (a label-only pass to choose the slices, then one pass
writing the chosen slices into memory-mapped arrays): memory holds one volume, not the dataset.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath

import numpy as np

from ...errors import DataError
from ..prepared import PreparedWriter
from .base import Archive, Source, not_hidden
from .imaging import resize_image, resize_mask

log = logging.getLogger("segmia")

TASK = "Task03_Liver"
LABELS = {0: "background", 1: "liver", 2: "tumour"}
DEFAULTS = {
    "height": 256,
    "width": 256,
    "hu_window": [-100, 400],
    "slices": "foreground",
    "min_foreground_pixels": 1,
    "max_slices": 5000,
    "selection": "spread",
    "seed": 0,
}
#: RAS labels spelled out (MONAI otherwise warns about a changing default)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def keep(name: str) -> bool:
    """Extract the labelled training volumes and dataset.json, not the unlabelled test set."""
    return not_hidden(name) and "imagesTs" not in PurePosixPath(name).parts


def task_dir(raw: str | Path) -> Path:
    raw = Path(raw)
    for candidate in (raw / TASK, raw):
        if (candidate / "dataset.json").is_file():
            return candidate
    found = sorted(p.parent for p in raw.glob("*/dataset.json"))
    if found:
        return found[0]
    raise DataError(
        f"{raw}: no {TASK}/dataset.json found; the archive does not have the Medical "
        "Segmentation Decathlon layout (Task03_Liver/dataset.json, imagesTr/, labelsTr/)"
    )


def training_pairs(raw: str | Path) -> list[tuple[str, Path, Path]]:
    """(patient, image, label) for every labelled volume listed in dataset.json."""
    root = task_dir(raw)
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
        entries = meta["training"]
        pairs = [(root / e["image"], root / e["label"]) for e in entries]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(
            f"{meta_path}: unreadable or without a 'training' list of image/label pairs ({err})."
        ) from None
    if not pairs:
        raise DataError(f"{meta_path}: the 'training' list is empty.")
    out = []
    for image, label in pairs:
        for path, what in ((image, "image"), (label, "label")):
            if not path.is_file():
                raise DataError(
                    f"{path}: the {what} volume listed in {meta_path} is missing (incomplete "
                    "archive or extraction)."
                )
        patient = image.name.removesuffix(".gz").removesuffix(".nii")
        out.append((patient, image, label))
    return sorted(out, key=lambda p: _natural(p[0]))


def _natural(name: str):
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def check_layout(raw: Path) -> None:
    training_pairs(raw)


def load_volume(path: Path, label: bool) -> np.ndarray:
    """A volume as an X x Y x Z array in RAS orientation (labels in their stored dtype)."""
    from monai.transforms import LoadImage, Orientation

    try:
        loader = LoadImage(
            reader="NibabelReader",
            image_only=True,
            ensure_channel_first=True,
            dtype=None if label else np.float32,
        )
        volume = Orientation(axcodes="RAS", labels=RAS_LABELS)(loader(str(path)))
    except Exception as err:  # nibabel, gzip and MONAI raise many types for a damaged file
        raise DataError(
            f"{path}: unreadable NIfTI volume ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}); the file is truncated or "
            "corrupt. Delete resources/raw/liver/extracted and rerun to unpack it again."
        ) from None
    array = np.asarray(volume.array if hasattr(volume, "array") else volume)
    if array.ndim != 4 or array.shape[0] != 1:
        raise DataError(f"{path}: expected a 3-D volume, got an array of shape {array.shape[1:]}.")
    return array[0]


def check_labels(label: np.ndarray, path: Path) -> None:
    if label.dtype.kind in "ui":
        ok = label.size == 0 or (label.min() >= 0 and label.max() <= 2)
    else:
        ok = bool(np.all((label == 0) | (label == 1) | (label == 2)))
    if not ok:
        bad = label[(label != 0) & (label != 1) & (label != 2)]
        values = np.unique(bad)[:10].tolist()
        raise DataError(
            f"{path}: unexpected label value(s) {values}; Task03 labels are 0 background, "
            "1 liver, 2 tumour."
        )


def axial(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice k of an RAS volume in radiological view (rows anterior -> posterior, columns
    patient right -> left)."""
    return np.ascontiguousarray(volume[::-1, ::-1, k].T)


def window(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip Hounsfield units to [low, high] and scale to 0..255 (float32)."""
    hu = np.clip(hu.astype(np.float32, copy=False), low, high)
    return (hu - np.float32(low)) * np.float32(255.0 / (high - low))


def candidate_slices(label: np.ndarray, params: dict) -> np.ndarray:
    """Slices to choose from: every slice, or those whose mask AT THE PREPARED RESOLUTION has at
    least ``min_foreground_pixels`` foreground pixels. Counting at the source resolution would
    keep slices whose few liver voxels vanish in the nearest-neighbour resize: an empty mask, a
    Dice loss of 0, the global-loss attack's most member-like score."""
    if params["slices"] == "all":
        return np.arange(label.shape[2])
    shown = np.flatnonzero((label > 0).any(axis=(0, 1)))
    height, width = params["height"], params["width"]
    counts = np.array(
        [
            int(resize_mask((axial(label, int(k)) > 0).astype(np.uint8), height, width).sum())
            for k in shown
        ],
        dtype=np.int64,
    )
    return shown[counts >= params["min_foreground_pixels"]]


def select(candidates: dict[str, np.ndarray], params: dict) -> dict[str, np.ndarray]:
    """At most ``max_slices`` of the candidate slices, chosen patient-aware with ``seed``."""
    total = sum(len(c) for c in candidates.values())
    cap = params.get("max_slices")
    if cap is None or total <= cap:
        return candidates
    rng = np.random.default_rng(params["seed"])
    patients = list(candidates)
    if params["selection"] == "patients":
        chosen = {p: candidates[p][:0] for p in patients}
        left = cap
        for i in rng.permutation(len(patients)):
            p = patients[i]
            c = candidates[p]
            if left <= 0:
                break
            if len(c) <= left:
                chosen[p] = c
            else:  # the last patient: its central slices
                start = (len(c) - left) // 2
                chosen[p] = c[start : start + left]
            left -= len(chosen[p])
        return chosen
    # spread: quotas proportional to the candidates (largest remainder, seeded tie-break),
    # then one random slice from each of `quota` consecutive strata of the patient's slices
    sizes = np.array([len(candidates[p]) for p in patients], dtype=np.float64)
    exact = sizes * cap / total
    quota = np.floor(exact).astype(np.int64)
    remainder = exact - quota
    tiebreak = rng.random(len(patients))
    order = np.lexsort((tiebreak, -remainder))
    quota[order[: cap - int(quota.sum())]] += 1
    chosen = {}
    for p, q in zip(patients, quota, strict=True):
        c = candidates[p]
        if q <= 0:
            chosen[p] = c[:0]
            continue
        strata = np.array_split(c, q)
        chosen[p] = np.array([s[rng.integers(len(s))] for s in strata], dtype=c.dtype)
    return chosen


def prepare(raw: str | Path, params: dict, out: str | Path, name: str = "liver") -> int:
    params = {**DEFAULTS, **params}
    low, high = params["hu_window"]
    if not low < high:
        raise DataError(
            f"prepare.hu_window {params['hu_window']}: the low end must be below the high end."
        )
    height, width = params["height"], params["width"]
    pairs = training_pairs(raw)
    log.info("liver: %d labelled volumes; choosing slices", len(pairs))
    candidates = {}
    for patient, _, label_path in pairs:
        label = load_volume(label_path, label=True)
        check_labels(label, label_path)
        candidates[patient] = candidate_slices(label, params)
        del label
    chosen = select(candidates, params)
    count = sum(len(c) for c in chosen.values())
    if count == 0:
        raise DataError(
            f"{raw}: no slice was kept (slices: {params['slices']}, min_foreground_pixels: "
            f"{params['min_foreground_pixels']}); the labels show no liver."
        )
    log.info(
        "liver: %d of %d candidate slices from %d patients",
        count,
        sum(len(c) for c in candidates.values()),
        sum(1 for c in chosen.values() if len(c)),
    )
    with PreparedWriter(out, count, 1, height, width) as writer:
        for patient, image_path, label_path in pairs:
            ks = chosen[patient]
            if not len(ks):
                continue
            image = load_volume(image_path, label=False)
            label = load_volume(label_path, label=True)
            if image.shape != label.shape:
                raise DataError(
                    f"{label_path}: label volume {label.shape} and image volume {image.shape} "
                    f"({image_path.name}) differ in shape."
                )
            for k in ks:
                img = resize_image(window(axial(image, int(k)), low, high), height, width)
                img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
                mask = resize_mask((axial(label, int(k)) > 0).astype(np.uint8), height, width)
                writer.add(img, mask, f"{patient}_z{int(k):04d}", patient)
            del image, label
        writer.finish(
            {
                "name": name,
                "source": "liver",
                "num_classes": 2,
                "ignore_index": None,
                "classes": ["background", "liver+tumour"],
                "prepare": params,
            }
        )
    return count


SOURCE = Source(
    name="liver",
    title="MSD Task03 Liver",
    # MONAI's mirror of the Decathlon archives (DecathlonDataset); same file and MD5 as the
    # Google Drive copy linked from medicaldecathlon.com
    base_url="https://msd-for-monai.s3-us-west-2.amazonaws.com",
    home="http://medicaldecathlon.com/ (or https://msd-for-monai.s3-us-west-2.amazonaws.com/Task03_Liver.tar)",
    archives=(Archive("Task03_Liver.tar", "several GB", "md5:a90ec6c4aa7f6a3d087205e23d4e6397"),),
    keep=keep,
    check_layout=check_layout,
    prepare=prepare,
    defaults=DEFAULTS,
)
