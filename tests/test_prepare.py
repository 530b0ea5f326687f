"""Preparation of the public datasets into the uniform format, on tiny trees in the upstream
layouts with known voxel and pixel values (tests/upstream.py)."""

import numpy as np
import pytest
from segmia.data.prepared import PreparedWriter, load_prepared
from segmia.data.sources import cityscapes, kvasir, liver
from segmia.errors import DataError
from upstream import (
    CITY_RGB,
    KVASIR_RGB,
    LIVER_LAST,
    STRIPE,
    UINT8_BY_SLICE,
    city_labels,
    cityscapes_trees,
    jpeg,
    kvasir_tree,
    liver_tree,
    liver_volumes,
    nifti_bytes,
    png,
    write_tree,
)

# --- liver ----------------------------------------------------------------------------------------


@pytest.fixture
def liver_raw(tmp_path):
    return write_tree(tmp_path / "raw", liver_tree())


def _liver(raw, out, **params):
    liver.prepare(raw, {"height": 32, "width": 24, **params}, out)
    return load_prepared(out)


def test_liver_slices_hu_window_and_merged_classes(liver_raw, tmp_path):
    data = _liver(liver_raw, tmp_path / "out")
    # foreground slices only: 2..LIVER_LAST[p] for each patient
    expected = [f"liver_{p}_z{z:04d}" for p in (0, 1, 2) for z in range(2, LIVER_LAST[p] + 1)]
    assert data.index["sample_id"].tolist() == expected
    assert data.index["group"].tolist() == [s.rsplit("_z", 1)[0] for s in expected]
    assert data.images.shape == (15, 1, 32, 24) and data.images.dtype == np.uint8
    assert data.masks.shape == (15, 32, 24) and data.masks.dtype == np.uint8
    assert set(np.unique(data.masks)) == {0, 1}  # liver (1) and tumour (2) merged
    assert data.meta["num_classes"] == 2 and data.meta["ignore_index"] is None
    # every slice is uniform in HU: the window maps it to a known 8-bit value
    for i, sid in enumerate(data.index["sample_id"]):
        z = int(sid.rsplit("_z", 1)[1])
        assert np.all(data.images[i] == UINT8_BY_SLICE[z]), (sid, np.unique(data.images[i]))
    # the tumour voxels (slice 4) are foreground too; the liver is a centred square
    tumour = data.index["sample_id"].tolist().index("liver_0_z0004")
    assert data.masks[tumour, 16, 12] == 1 and data.masks[tumour, 0, 0] == 0
    assert data.masks.sum(axis=(1, 2)).min() > 0


def test_liver_other_windows_and_all_slices(liver_raw, tmp_path):
    data = _liver(liver_raw, tmp_path / "out", hu_window=[-1000, 1000], slices="all")
    assert len(data.index) == 30  # 3 patients x 10 slices
    # slice 1 is -500 HU: (−500 + 1000) * 255 / 2000 = 63.75 -> 64
    assert np.all(data.images[1] == 64)
    assert data.masks[0].sum() == 0  # slice 0 shows no liver but is kept


def test_liver_is_read_in_ras_whatever_the_stored_orientation(tmp_path):
    # one asymmetric volume stored twice: RAS voxel order, and LPS (x and y flipped)
    image = np.full((8, 6, 3), -1000, dtype=np.int16)
    image[6, 1, :] = 400  # x = 6: towards the patient's right; y = 1: posterior
    label = np.zeros((8, 6, 3), dtype=np.uint8)
    label[5:8, 0:2, :] = 1
    trees = {
        "ras": (image, label, np.eye(4)),
        "lps": (image[::-1, ::-1], label[::-1, ::-1], np.diag([-1.0, -1.0, 1.0, 1.0])),
    }
    prepared = {}
    for name, (img, lab, affine) in trees.items():
        files = {
            "Task03_Liver/imagesTr/liver_0.nii.gz": nifti_bytes(img, affine),
            "Task03_Liver/labelsTr/liver_0.nii.gz": nifti_bytes(lab, affine),
            "Task03_Liver/dataset.json": b'{"training": [{"image": "./imagesTr/liver_0.nii.gz",'
            b' "label": "./labelsTr/liver_0.nii.gz"}]}',
        }
        raw = write_tree(tmp_path / name, files)
        liver.prepare(raw, {"height": 6, "width": 8}, tmp_path / f"out_{name}")
        prepared[name] = load_prepared(tmp_path / f"out_{name}")
    ras, lps = prepared["ras"], prepared["lps"]
    assert np.array_equal(np.asarray(ras.images), np.asarray(lps.images))
    assert np.array_equal(np.asarray(ras.masks), np.asarray(lps.masks))
    # radiological view: anterior (high y) at the top, the patient's right (high x) on the left
    # the bright voxel x=6 (right), y=1 (posterior) -> row 6-1-1 = 4, column 8-1-6 = 1
    assert ras.images[0, 0, 4, 1] == 255 and (ras.images[0, 0] == 255).sum() == 1
    # the label block x 5..7, y 0..1 -> rows 4..5 (bottom), columns 0..2 (left)
    assert ras.masks[0, 4:6, 0:3].all() and ras.masks[0].sum() == 6


@pytest.mark.parametrize("selection", ["spread", "patients"])
def test_liver_cap_is_seeded_and_patient_aware(liver_raw, tmp_path, selection):
    params = {"max_slices": 7, "selection": selection, "seed": 3}
    a = _liver(liver_raw, tmp_path / "a", **params)
    b = _liver(liver_raw, tmp_path / "b", **params)
    assert len(a.index) == 7
    assert a.index.equals(b.index), "the same seed chooses the same slices"
    per_patient = a.index.groupby("group").size()
    if selection == "spread":
        assert len(per_patient) == 3  # every patient contributes, about in proportion
        assert per_patient.max() - per_patient.min() <= 1
    else:
        assert len(per_patient) <= 2  # whole patients first, one trimmed at most
        assert (per_patient >= 1).all()
    others = {
        s: _liver(liver_raw, tmp_path / f"s{s}", **{**params, "seed": s}).index for s in (4, 5)
    }
    assert any(not o.equals(a.index) for o in others.values()), "another seed, other slices"


def test_liver_select_spread_strata():
    candidates = {"p0": np.arange(100), "p1": np.arange(50), "p2": np.arange(10)}
    chosen = liver.select(candidates, {"max_slices": 16, "selection": "spread", "seed": 0})
    assert [len(chosen[p]) for p in ("p0", "p1", "p2")] == [10, 5, 1]
    assert np.all(np.diff(chosen["p0"]) > 0) and chosen["p0"][-1] >= 90  # spread over the organ


def test_liver_rejects_bad_inputs_naming_the_file(liver_raw, tmp_path):
    labels = liver_raw / "Task03_Liver" / "labelsTr"
    bad = liver_volumes(0)[1]
    bad[0, 0, 0] = 3
    (labels / "liver_1.nii.gz").write_bytes(nifti_bytes(bad))
    with pytest.raises(DataError, match=r"liver_1.nii.gz: unexpected label value\(s\) \[3\]"):
        _liver(liver_raw, tmp_path / "out")
    data = (labels / "liver_0.nii.gz").read_bytes()
    (labels / "liver_1.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="liver_1.nii.gz: unreadable NIfTI volume"):
        _liver(liver_raw, tmp_path / "out")
    (labels / "liver_1.nii.gz").unlink()
    with pytest.raises(DataError, match="liver_1.nii.gz: the label volume listed in .* is missing"):
        _liver(liver_raw, tmp_path / "out")
    small = np.zeros((16, 16, 9), dtype=np.uint8)
    small[4:8, 4:8, 3] = 1
    (labels / "liver_1.nii.gz").write_bytes(nifti_bytes(small))
    with pytest.raises(DataError, match="liver_1.nii.gz: label volume .* differ in shape"):
        _liver(liver_raw, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --- kvasir ---------------------------------------------------------------------------------------


@pytest.fixture
def kvasir_raw(tmp_path):
    return write_tree(tmp_path / "raw", kvasir_tree())


def test_kvasir_rgb_half_range_masks_and_image_groups(kvasir_raw, tmp_path):
    kvasir.prepare(kvasir_raw, {"height": 32, "width": 32}, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert data.images.shape == (6, 3, 32, 32) and data.masks.shape == (6, 32, 32)
    assert (data.index["group"] == data.index["sample_id"]).all()
    assert data.index["sample_id"].iloc[0] == "cju0000abc"
    # RGB order: channel 0 is red
    centre = np.asarray(data.images[:, :, 16, 16], dtype=int)
    assert np.all(np.abs(centre - KVASIR_RGB) <= 3), centre
    assert set(np.unique(data.masks)) == {0, 1}
    # rows 16..31 of 48 -> rows ~11..20 of 32: the 255 half and the 200 half are both polyp
    band = np.asarray(data.masks[0, 12:20])
    assert band.all() and data.masks[0, :8].sum() == 0 and data.masks[0, 24:].sum() == 0


def test_kvasir_original_quirks_bgr_and_floor(kvasir_raw, tmp_path):
    kvasir.prepare(
        kvasir_raw,
        {"height": 32, "width": 32, "channel_order": "bgr", "binarize": "floor"},
        tmp_path / "out",
    )
    data = load_prepared(tmp_path / "out")
    centre = np.asarray(data.images[0, :, 16, 16], dtype=int)
    assert np.all(np.abs(centre - KVASIR_RGB[::-1]) <= 3), centre
    # floor(v / 255): only the exact-255 left half survives, the 200 half is background
    assert data.masks[0, 12:20, :14].all() and data.masks[0, 12:20, 18:].sum() == 0


def test_kvasir_problems_name_the_file(kvasir_raw, tmp_path):
    root = kvasir_raw / "kvasir-seg"
    (root / "masks" / "cju0003abc.jpg").unlink()
    with pytest.raises(DataError, match=r"cju0003abc.jpg: no matching mask"):
        kvasir.prepare(kvasir_raw, {}, tmp_path / "out")
    (root / "masks" / "cju0003abc.jpg").write_bytes(jpeg(np.zeros((10, 10), np.uint8)))
    with pytest.raises(DataError, match=r"cju0003abc.jpg: mask is 10x10 but its image"):
        kvasir.prepare(kvasir_raw, {}, tmp_path / "out")
    data = (root / "images" / "cju0002abc.jpg").read_bytes()
    (root / "images" / "cju0002abc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cju0002abc.jpg: unreadable image .*truncated"):
        kvasir.prepare(kvasir_raw, {}, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*")), "a failed prepare leaves nothing behind"


def test_kvasir_finds_the_upstream_folder_name(tmp_path):
    raw = write_tree(tmp_path / "raw", kvasir_tree(n=2, root="Kvasir-SEG"))
    assert kvasir.prepare(raw, {"height": 16, "width": 16}, tmp_path / "out") == 2


# --- cityscapes -----------------------------------------------------------------------------------


@pytest.fixture
def city_raw(tmp_path):
    trees = cityscapes_trees()
    return write_tree(
        tmp_path / "raw",
        {**trees["leftImg8bit_trainvaltest.zip"], **trees["gtFine_trainvaltest.zip"]},
    )


def _expected_train_ids(void):
    table = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
    return [table.get(i, void) for i in range(34)]


@pytest.mark.parametrize(("void", "void_value"), [("ignore", 255), ("class6", 6)])
def test_cityscapes_train_ids_void_and_city_groups(city_raw, tmp_path, void, void_value):
    # 136 x 16 label maps, label id i in columns [4 i, 4 i + 4): resized to 68 x 8 (W x H)
    cityscapes.prepare(city_raw, {"height": 8, "width": 68, "void": void}, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert data.images.shape == (4, 3, 8, 68) and data.masks.shape == (4, 8, 68)
    assert data.meta["num_classes"] == 19 and data.meta["ignore_index"] == 255
    assert data.index["group"].tolist() == ["aachen", "aachen", "bochum", "bochum"]
    assert data.index["sample_id"].iloc[0] == "aachen_000000_000019"
    row = np.asarray(data.masks[0, 0, :: STRIPE // 2])
    assert row.tolist() == _expected_train_ids(void_value)
    assert (np.asarray(data.masks) == data.masks[0, 0]).all()  # every row and image alike
    assert np.all(np.asarray(data.images[:, :, 4, 30]) == CITY_RGB)  # RGB order
    expected = set(range(19)) | ({255} if void == "ignore" else set())
    assert set(np.unique(data.masks)) == expected


def test_cityscapes_problems_name_the_file(city_raw, tmp_path):
    labels = city_raw / "gtFine" / "train" / "bochum"
    bad = city_labels()
    bad[0, 0] = 40
    (labels / "bochum_000000_000313_gtFine_labelIds.png").write_bytes(png(bad))
    with pytest.raises(
        DataError,
        match=r"bochum_000000_000313_gtFine_labelIds.png: unexpected label id\(s\) \[40\]",
    ):
        cityscapes.prepare(city_raw, {}, tmp_path / "out")
    rgb = np.zeros((16, 136, 3), np.uint8)
    (labels / "bochum_000000_000313_gtFine_labelIds.png").write_bytes(png(rgb))
    with pytest.raises(DataError, match="8-bit single-channel label image, found mode RGB"):
        cityscapes.prepare(city_raw, {}, tmp_path / "out")
    (labels / "bochum_000000_000313_gtFine_labelIds.png").unlink()
    with pytest.raises(
        DataError, match="bochum_000000_000313_leftImg8bit.png: no matching label map"
    ):
        cityscapes.prepare(city_raw, {}, tmp_path / "out")
    (labels / "bochum_000000_000313_gtFine_labelIds.png").write_bytes(png(city_labels()[:8]))
    with pytest.raises(DataError, match="label map is 136x8 but its image is 136x16"):
        cityscapes.prepare(city_raw, {}, tmp_path / "out")


# --- the writer -----------------------------------------------------------------------------------


def test_writer_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(RuntimeError), PreparedWriter(tmp_path / "out", 3, 1, 4, 4) as writer:
        writer.add(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), "a", "g")
        raise RuntimeError("killed")
    assert list((tmp_path / "out").iterdir()) == []


def test_writer_checks_labels_and_count(tmp_path):
    with (
        pytest.raises(DataError, match="1 samples written but 2"),
        PreparedWriter(tmp_path / "o", 2, 1, 4, 4) as w,
    ):
        w.add(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), "a", "g")
        w.finish({"name": "x", "num_classes": 2, "ignore_index": None})
    with (
        pytest.raises(DataError, match=r"label value\(s\) \[5\]"),
        PreparedWriter(tmp_path / "o", 1, 1, 4, 4) as w,
    ):
        w.add(np.zeros((4, 4), np.uint8), np.full((4, 4), 5, np.uint8), "a", "g")
        w.finish({"name": "x", "num_classes": 2, "ignore_index": None})
    assert list((tmp_path / "o").iterdir()) == []


def test_liver_slices_are_chosen_by_their_mask_at_the_prepared_resolution():
    """A liver tip of one voxel vanishes when a 32x32 slice is resized to 16x16: that slice would
    reach the model with an empty mask (Dice loss 0), so it is not a candidate."""
    from segmia.data.sources.imaging import resize_mask
    from segmia.data.sources.liver import DEFAULTS, axial, candidate_slices

    label = np.zeros((32, 32, 4), dtype=np.uint8)
    label[8:20, 8:20, 1] = 1  # a liver
    label[5, 5, 2] = 1  # one voxel that nearest-neighbour shrinking drops
    label[4, 4, 3] = 2  # one tumour voxel that it keeps (even rows and columns survive)
    kept = {
        k: int(resize_mask((axial(label, k) > 0).astype(np.uint8), 16, 16).sum()) for k in range(4)
    }
    assert kept[2] == 0 and kept[3] == 1  # what the resize does to the two tips
    params = {**DEFAULTS, "height": 16, "width": 16}
    assert candidate_slices(label, params).tolist() == [1, 3]
    assert candidate_slices(label, {**params, "height": 32, "width": 32}).tolist() == [1, 2, 3]
    assert candidate_slices(label, {**params, "min_foreground_pixels": 2}).tolist() == [1]
    assert candidate_slices(label, {**params, "slices": "all"}).tolist() == [0, 1, 2, 3]
