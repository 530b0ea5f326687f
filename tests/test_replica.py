"""Replica archives (segmia.data.replica): the real datasets' structure, through the real download
(archives placed by hand, checksums from the config) and the real preparation."""

import json
import os
import re
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from segmia.cli import main
from segmia.data.download import download_source
from segmia.data.prepared import load_prepared
from segmia.data.replica import LIVER_SLICES, md5_of, write_replica
from segmia.data.sources import get_source
from segmia.data.sources.cityscapes import (
    TEST_CITY_SIZES,
    TRAIN_CITY_SIZES,
    VAL_CITY_SIZES,
    lookup,
)
from segmia.errors import DataError
from upstream import free_port

PARAMS = {"retries": 0, "backoff": 0.001, "timeout": 5}


def download(source: str, raw: Path, checksums: dict[str, str]) -> Path:
    """The real download step, offline: the archives were placed by hand in ``raw``."""
    return download_source(
        get_source(source),
        raw,
        {**PARAMS, "base_url": f"http://127.0.0.1:{free_port()}", "checksums": checksums},
        raw.parent / "checksums.lock.json",
        env={},
    )


def empty_masks(masks: np.ndarray) -> int:
    return int((masks.reshape(len(masks), -1).max(axis=1) == 0).sum())


# --- MSD Task03 Liver -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def liver(tmp_path_factory):
    raw = tmp_path_factory.mktemp("liver") / "raw" / "liver"
    digests = write_replica("liver", raw)
    return raw, digests, download("liver", raw, digests)


@pytest.mark.slow
def test_liver_archive_has_the_msd_layout(liver):
    raw, digests, _ = liver
    assert list(digests) == ["Task03_Liver.tar"] and digests["Task03_Liver.tar"].startswith("md5:")
    with tarfile.open(raw / "Task03_Liver.tar") as tf:
        names = [m.name for m in tf.getmembers() if m.isfile()]
        meta = json.loads(tf.extractfile("Task03_Liver/dataset.json").read())
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "cancer"}
    assert meta["modality"] == {"0": "CT"}
    assert (meta["numTraining"], meta["numTest"]) == (131, 70)
    assert meta["training"][0] == {
        "image": "./imagesTr/liver_0.nii.gz",
        "label": "./labelsTr/liver_0.nii.gz",
    }
    assert len(meta["training"]) == 131 and len(meta["test"]) == 70
    volumes = {
        folder: sorted(
            int(n.rsplit("_", 1)[1].split(".")[0])
            for n in names
            if n.startswith(f"Task03_Liver/{folder}/liver_")
        )
        for folder in ("imagesTr", "labelsTr", "imagesTs")
    }
    assert volumes["imagesTr"] == volumes["labelsTr"] == list(range(131))
    assert volumes["imagesTs"] == list(range(132, 202))  # 70, numbered on from 132
    assert [f"./imagesTs/liver_{k}.nii.gz" for k in volumes["imagesTs"]] == meta["test"]
    junk = [n for n in names if n.rsplit("/", 1)[1].startswith("._")]
    folders = {n.rsplit("/", 2)[1] for n in junk}
    assert len(junk) > 20 and {"imagesTr", "labelsTr", "imagesTs"} <= folders


@pytest.mark.slow
def test_liver_download_unpacks_the_labelled_volumes_only(liver):
    _, _, target = liver
    files = [p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()]
    assert not [f for f in files if "/._" in f or f.startswith("._")]  # macOS junk skipped
    assert not [f for f in files if "imagesTs" in f]  # the unlabelled test set too
    assert len([f for f in files if "/imagesTr/" in f]) == 131
    assert len([f for f in files if "/labelsTr/" in f]) == 131


@pytest.mark.slow
def test_liver_volumes_look_like_the_real_ones(liver):
    import nibabel as nib

    _, _, target = liver
    root = target / "Task03_Liver"
    slices, orientations, liver_slices = [], Counter(), 0
    for k in range(131):
        label_img = nib.load(root / "labelsTr" / f"liver_{k}.nii.gz")
        image_img = nib.load(root / "imagesTr" / f"liver_{k}.nii.gz")
        assert image_img.get_data_dtype() == np.int16 and label_img.get_data_dtype() == np.uint8
        assert image_img.shape == label_img.shape
        assert np.allclose(image_img.affine, label_img.affine)
        zooms = image_img.header.get_zooms()
        assert 0.7 <= zooms[0] == zooms[1] <= 0.9 and 0.7 <= zooms[2] <= 5.0
        orientations[nib.aff2axcodes(image_img.affine)] += 1
        slices.append(image_img.shape[2])
        label = np.asarray(label_img.dataobj)
        assert set(np.unique(label).tolist()) <= {0, 1, 2}
        zs = np.flatnonzero((label > 0).any(axis=(0, 1)))
        assert zs[-1] - zs[0] + 1 == len(zs), k  # one contiguous range of liver slices
        assert 0.2 <= len(zs) / label.shape[2] <= 0.45, k
        liver_slices += len(zs)
        # tumour only inside the liver: every in-plane neighbour of a tumour voxel is liver
        tumour = label == 2
        padded = np.pad(label > 0, ((1, 1), (1, 1), (0, 0)))
        for dx, dy in ((0, 1), (2, 1), (1, 0), (1, 2)):
            neighbour = padded[dx : dx + label.shape[0], dy : dy + label.shape[1]]
            assert neighbour[tumour].all(), k
        if k % 20 == 0:  # plausible Hounsfield units
            hu = np.asarray(image_img.dataobj)
            assert -1000 - 60 < np.median(hu[0, label.shape[1] // 2]) < -1000 + 60  # air
            assert 50 < np.median(hu[label == 1]) < 130  # enhanced liver
            if tumour.any():
                # darker or brighter than the liver around it
                assert np.abs(hu[tumour] - np.median(hu[label == 1])).mean() > 20
    assert (min(slices), max(slices)) == LIVER_SLICES == (74, 987)
    assert 50_000 < sum(slices) < 70_000  # the real training set: about 58 600 slices
    assert liver_slices > 3 * 5000  # well above the study's cap
    assert orientations[("L", "P", "S")] > orientations[("R", "A", "S")] > 0


@pytest.mark.slow
def test_liver_prepare_reaches_the_cap_with_every_patient(liver, tmp_path):
    _, _, target = liver
    count = get_source("liver").prepare(target, {"height": 32, "width": 32}, tmp_path / "spread")
    data = load_prepared(tmp_path / "spread")
    assert count == len(data.index) == 5000  # max_slices, reached exactly
    assert data.index["group"].nunique() == 131
    assert set(data.index["group"]) == {f"liver_{k}" for k in range(131)}
    assert empty_masks(data.masks) == 0  # slices: foreground
    assert set(np.unique(data.masks).tolist()) == {0, 1}
    # radiological view whatever the file's voxel order (LPS or RAS): the liver (patient's
    # right) mostly on the image's left, the spine (posterior, the only bone) in the lower half
    masks = data.masks.astype(np.float64)
    left = masks[:, :, :16].sum(axis=(1, 2)) / masks.sum(axis=(1, 2))
    bone = (data.images[:, 0] >= 230).astype(np.float64)
    low = bone[:, 16:].sum(axis=(1, 2)) / bone.sum(axis=(1, 2))
    per_patient = data.index.assign(left=left, low=low).groupby("group")[["left", "low"]].mean()
    assert (per_patient["left"] > 0.75).all() and (per_patient["low"] > 0.9).all()
    count = get_source("liver").prepare(
        target, {"height": 32, "width": 32, "selection": "patients"}, tmp_path / "patients"
    )
    groups = load_prepared(tmp_path / "patients").index["group"].nunique()
    assert count == 5000 and 10 < groups < 131  # whole patients, the last one trimmed


# --- Kvasir-SEG -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kvasir(tmp_path_factory):
    raw = tmp_path_factory.mktemp("kvasir") / "raw" / "kvasir"
    digests = write_replica("kvasir", raw)
    return raw, digests, download("kvasir", raw, digests)


def test_kvasir_archive_has_the_real_layout(kvasir):
    raw, digests, _ = kvasir
    assert list(digests) == ["kvasir-seg.zip"]
    with zipfile.ZipFile(raw / "kvasir-seg.zip") as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        boxes = json.loads(zf.read("Kvasir-SEG/kavsir_bboxes.json"))
    images = [n for n in names if n.startswith("Kvasir-SEG/images/")]
    masks = [n for n in names if n.startswith("Kvasir-SEG/masks/")]
    assert len(images) == len(masks) == 1000 and len(names) == 2001
    ids = [Path(n).stem for n in images]
    assert ids == [Path(n).stem for n in masks]
    assert all(re.fullmatch(r"c[a-z0-9]{24}", i) for i in ids) and len(set(ids)) == 1000
    assert set(boxes) == set(ids)
    first = boxes[ids[0]]
    assert {"height", "width", "bbox"} <= set(first) and first["bbox"][0]["label"] == "polyp"


def test_kvasir_prepare_binarises_the_noisy_jpeg_masks(kvasir, tmp_path):
    from PIL import Image

    _, _, target = kvasir
    root = target / "Kvasir-SEG"
    sizes, grey = set(), set()
    boxes = json.loads((root / "kavsir_bboxes.json").read_text())
    for path in sorted((root / "masks").iterdir())[:100]:
        with Image.open(path) as img:
            assert img.format == "JPEG"
            sizes.add(img.size)
            mask = np.asarray(img.convert("L"))
        grey |= set(np.unique(mask).tolist())
        assert (boxes[path.stem]["width"], boxes[path.stem]["height"]) == img.size
        with Image.open(root / "images" / path.name) as image:
            assert image.size == img.size and image.mode == "RGB"
    assert len(sizes) > 20  # images of many sizes and aspects
    assert grey - {0, 255}  # JPEG noise around 0 and 255 before binarisation
    count = get_source("kvasir").prepare(target, {"height": 32, "width": 32}, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert count == len(data.index) == 1000 and data.index["group"].nunique() == 1000
    assert set(np.unique(data.masks).tolist()) == {0, 1}
    assert data.images.shape == (1000, 3, 32, 32)
    # the polyp shows in the image: brighter than the mucosa around it
    inside = (data.images.mean(axis=1) * data.masks).sum() / data.masks.sum()
    outside = (data.images.mean(axis=1) * (1 - data.masks)).sum() / (1 - data.masks).sum()
    assert inside > outside + 10


def test_a_corrupt_replica_is_rejected_by_the_checksum(tmp_path):
    raw = tmp_path / "raw" / "kvasir"
    digests = write_replica("kvasir", raw, count=50)
    archive = raw / "kvasir-seg.zip"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        download("kvasir", raw, digests)
    message = str(info.value)
    assert "kvasir-seg.zip" in message and digests["kvasir-seg.zip"][4:] in message
    assert not (raw / "extracted").exists()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = write_replica("kvasir", tmp_path / "a", seed=0)
    assert write_replica("kvasir", tmp_path / "b", seed=0) == first
    assert (tmp_path / "a" / "kvasir-seg.zip").read_bytes() == (
        tmp_path / "b" / "kvasir-seg.zip"
    ).read_bytes()
    assert first["kvasir-seg.zip"] == md5_of(tmp_path / "a" / "kvasir-seg.zip")
    other = write_replica("kvasir", tmp_path / "c", seed=1)
    assert other["kvasir-seg.zip"] != first["kvasir-seg.zip"]
    # rewriting the same archive leaves the file alone; another seed replaces it
    path = tmp_path / "a" / "kvasir-seg.zip"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert write_replica("kvasir", tmp_path / "a", seed=0) == first
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert write_replica("kvasir", tmp_path / "a", seed=1) == other
    assert md5_of(path) == other["kvasir-seg.zip"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["kvasir-seg.zip"]  # no temp left


@pytest.mark.slow
def test_liver_and_cityscapes_replicas_are_deterministic(cityscapes, tmp_path):
    first = write_replica("liver", tmp_path / "liver" / "a", seed=3, size=8)
    assert write_replica("liver", tmp_path / "liver" / "b", seed=3, size=8) == first
    other = write_replica("liver", tmp_path / "liver" / "c", seed=4, size=8)
    assert other["Task03_Liver.tar"] != first["Task03_Liver.tar"]
    _, digests, _ = cityscapes  # seed 0, default options
    assert write_replica("cityscapes", tmp_path / "cityscapes" / "a") == digests
    other = write_replica("cityscapes", tmp_path / "cityscapes" / "b", seed=1, extras=False)
    assert not set(other.values()) & set(digests.values())


def test_unknown_sources_and_options_are_refused(tmp_path):
    with pytest.raises(DataError, match="public sources are liver, kvasir, cityscapes"):
        write_replica("synthetic_ct", tmp_path)
    with pytest.raises(DataError, match="options: size, gzip_level"):
        write_replica("liver", tmp_path, width=10)
    with pytest.raises(DataError, match="size: '32' is not int"):
        write_replica("liver", tmp_path, size="32")
    with pytest.raises(DataError, match="test_per_city: True is not int or null"):
        write_replica("cityscapes", tmp_path, test_per_city=True)
    with pytest.raises(DataError, match="at least 8 x 8"):
        write_replica("liver", tmp_path, size=4)
    assert not list(tmp_path.iterdir())


def test_cli_prints_the_archives_and_their_md5(tmp_path, capsys):
    out = tmp_path / "raw" / "kvasir"
    assert (
        main(["replica", "--source", "kvasir", "--out", str(out), "--params", '{"count": 5}']) == 0
    )
    path, digest = capsys.readouterr().out.split()
    assert Path(path) == out / "kvasir-seg.zip" and digest == md5_of(path)
    assert (
        main(["replica", "--source", "kvasir", "--out", str(out), "--params", '{"size": 5}']) == 1
    )
    assert "options: min_side, max_side, count" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replica", "--source", "synthetic_ct", "--out", str(out)])


# --- Cityscapes -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    raw = tmp_path_factory.mktemp("cityscapes") / "raw" / "cityscapes"
    digests = write_replica("cityscapes", raw)
    return raw, digests, download("cityscapes", raw, digests)


def _per_city(names: list[str], split: str, suffix: str) -> Counter:
    pattern = re.compile(rf"\w+/{split}/([a-z]+)/(\1_\d{{6}}_\d{{6}}){re.escape(suffix)}")
    found = [pattern.fullmatch(n) for n in names if f"/{split}/" in n and n.endswith(suffix)]
    assert all(found)
    return Counter(m.group(1) for m in found)


@pytest.mark.slow
def test_cityscapes_archives_have_the_real_cities_and_counts(cityscapes):
    raw, digests, _ = cityscapes
    assert list(digests) == ["leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"]
    assert sum(TRAIN_CITY_SIZES.values()) == 2975 and sum(VAL_CITY_SIZES.values()) == 500
    with zipfile.ZipFile(raw / "leftImg8bit_trainvaltest.zip") as zf:
        left = zf.namelist()
    with zipfile.ZipFile(raw / "gtFine_trainvaltest.zip") as zf:
        fine = zf.namelist()
        polygons = json.loads(zf.read(next(n for n in fine if n.endswith("_polygons.json"))))
    assert {"README", "license.txt"} <= set(left) & set(fine)
    for split, sizes in (("train", TRAIN_CITY_SIZES), ("val", VAL_CITY_SIZES)):
        assert _per_city(left, split, "_leftImg8bit.png") == sizes
        for suffix in ("labelIds.png", "instanceIds.png", "color.png", "polygons.json"):
            assert _per_city(fine, split, f"_gtFine_{suffix}") == sizes
    test = _per_city(left, "test", "_leftImg8bit.png")
    assert set(test) == set(TEST_CITY_SIZES) and sum(test.values()) <= 20
    assert _per_city(fine, "test", "_gtFine_labelIds.png") == test
    assert polygons["imgWidth"] == 64 and polygons["imgHeight"] == 32
    assert {"sky", "road", "ego vehicle"} <= {o["label"] for o in polygons["objects"]}


@pytest.mark.slow
def test_cityscapes_prepare_groups_by_city_with_void_ignored(cityscapes, tmp_path):
    from PIL import Image

    _, _, target = cityscapes
    files = [p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()]
    assert not [f for f in files if "/val/" in f or "/test/" in f]  # only train is unpacked
    assert not [f for f in files if f.endswith(("_color.png", "_instanceIds.png", ".json"))]
    count = get_source("cityscapes").prepare(target, {"height": 32, "width": 64}, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert count == len(data.index) == 2975
    assert data.index["group"].value_counts().to_dict() == TRAIN_CITY_SIZES
    ids = set()
    table = lookup()
    for i in range(2975):
        sid, city = data.index.loc[i, ["sample_id", "group"]]
        path = target / "gtFine" / "train" / city / f"{sid}_gtFine_labelIds.png"
        with Image.open(path) as img:
            assert img.mode == "L" and img.size == (64, 32)
            label = np.asarray(img)
        ids |= set(np.unique(label).tolist())
        assert np.array_equal(data.masks[i], table[label])  # native size: an exact mapping
    assert ids == set(range(34))  # every label id 0..33 occurs, nothing else
    values = set(np.unique(data.masks).tolist())
    assert values == set(range(19)) | {255}  # void -> ignore index 255
    assert data.meta["ignore_index"] == 255


@pytest.mark.slow
def test_cityscapes_replica_images_follow_their_labels(cityscapes):
    from PIL import Image

    _, _, target = cityscapes
    stem = "aachen_000000_000019"
    with Image.open(target / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png") as im:
        assert im.mode == "RGB" and im.size == (64, 32)
        image = np.asarray(im).astype(float)
    label = np.asarray(
        Image.open(target / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png")
    )
    sky, road = image[label == 23], image[label == 7]
    assert len(sky) and len(road)
    assert sky[:, 2].mean() > road[:, 2].mean() + 30  # blue sky above a grey road
    assert np.nonzero(label == 23)[0].mean() < np.nonzero(label == 7)[0].mean()
