"""Synthetic datasets, the prepared format and the split."""

import numpy as np
import pandas as pd
import pytest
from segmia.data.prepared import load_prepared, write_prepared
from segmia.data.split import make_split, mia_indices, role_indices, train_indices
from segmia.data.synthetic import generate
from segmia.errors import DataError

CT = dict(groups=12, group_size=5, height=32, width=32, noise=0.3, seed=0)
SCENES = dict(groups=6, group_size=4, height=24, width=48, noise=0.2, seed=0)
SIZES = dict(victim_pool=25, shadow_pool=25, train_size=10, val_size=5, mia_size=8)


def test_synthetic_ct_is_deterministic_binary_and_grouped():
    a, b = generate("synthetic_ct", CT), generate("synthetic_ct", CT)
    images, masks, index, meta = a
    assert images.shape == (60, 1, 32, 32) and images.dtype == np.uint8
    assert masks.shape == (60, 32, 32) and set(np.unique(masks)) == {0, 1}
    assert np.array_equal(images, b[0]) and np.array_equal(masks, b[1])
    assert index["group"].nunique() == 12 and (index.groupby("group").size() == 5).all()
    assert (masks.reshape(60, -1).sum(1) > 0).all(), "every slice shows the organ"
    # consecutive slices of a patient are far more alike than slices of different patients
    within = np.abs(masks[0].astype(int) - masks[1]).mean()
    across = np.abs(masks[0].astype(int) - masks[5]).mean()
    assert within < across
    other = generate("synthetic_ct", {**CT, "seed": 1})[0]
    assert not np.array_equal(images, other)
    assert meta["num_classes"] == 2 and meta["ignore_index"] is None


def test_synthetic_scenes_have_four_classes_and_void():
    images, masks, index, meta = generate("synthetic_scenes", SCENES)
    assert images.shape == (24, 3, 24, 48)
    assert set(np.unique(masks)) == {0, 1, 2, 3, 4, 255}
    assert meta["num_classes"] == 5 and meta["ignore_index"] == 255


def test_prepared_roundtrip_and_validation(tmp_path):
    images, masks, index, meta = generate("synthetic_ct", CT)
    write_prepared(tmp_path / "ct", images, masks, index, meta)
    data = load_prepared(tmp_path / "ct")
    assert np.array_equal(np.asarray(data.images), images)
    assert data.out_channels == 1 and data.channels == 1
    bad = masks.copy()
    bad[3, 0, 0] = 7
    with pytest.raises(DataError, match=r"label value\(s\) \[7\]"):
        write_prepared(tmp_path / "bad", images, bad, index, meta)
    with pytest.raises(DataError, match="index.csv has 59 rows"):
        write_prepared(tmp_path / "bad", images, masks, index.iloc[:-1], meta)


def _check_split(split: pd.DataFrame, sizes: dict):
    for pool in ("victim", "shadow"):
        in_pool = split[split["pool"] == pool]
        assert len(in_pool) == sizes[f"{pool}_pool"]
        assert (in_pool["role"] == "val").sum() == sizes["val_size"]
        assert (in_pool["role"] == "nonmember").sum() == sizes["mia_size"]
    # no group in two pools, no group in two roles
    used = split[split["role"] != "unused"]
    assert (used.groupby("group")["pool"].nunique() == 1).all()
    assert (used.groupby("group")["role"].nunique() == 1).all()
    assert (split.groupby("group")["pool"].apply(lambda p: p[p != "unused"].nunique()) <= 1).all()


def test_split_is_group_aware_exact_and_deterministic():
    index = generate("synthetic_ct", CT)[2]
    split = make_split(index, SIZES, seed=3)
    _check_split(split, SIZES)
    assert split.equals(make_split(index, SIZES, seed=3))
    assert not split["pool"].equals(make_split(index, SIZES, seed=4)["pool"])


def test_training_sets_are_nested_and_mia_sets_balanced():
    index = generate("synthetic_ct", CT)[2]
    split = make_split(index, SIZES, seed=0)
    small, large = train_indices(split, "victim", 5), train_indices(split, "victim", 10)
    assert list(small) == list(large[:5])
    members, nonmembers = mia_indices(split, "victim", 10, SIZES)
    assert len(members) == len(nonmembers) == 8
    assert set(members) <= set(large)
    assert set(nonmembers) <= set(role_indices(split, "victim", "nonmember"))
    assert not set(members) & set(nonmembers)
    assert not set(large) & set(train_indices(split, "shadow", 10))
    with pytest.raises(DataError, match="fewer than the training size"):
        train_indices(split, "victim", 100)


def test_nonmembers_from_validation():
    index = generate("synthetic_ct", CT)[2]
    sizes = {
        **SIZES,
        "nonmembers": "validation",
        "mia_size": 5,
        "victim_pool": 15,
        "shadow_pool": 15,
    }
    split = make_split(index, sizes, seed=0)
    assert not (split["role"] == "nonmember").any()
    members, nonmembers = mia_indices(split, "victim", 10, sizes)
    assert len(members) == len(nonmembers) == 5
    assert set(nonmembers) == set(role_indices(split, "victim", "val"))


def test_sample_level_split_quirk_mixes_patients():
    index = generate("synthetic_ct", CT)[2]
    split = make_split(index, {**SIZES, "group_aware": False}, seed=0)
    used = split[split["role"] != "unused"]
    assert (used.groupby("group")["pool"].nunique() > 1).any()


def test_split_rejects_pools_larger_than_the_dataset():
    index = generate("synthetic_ct", CT)[2]
    with pytest.raises(DataError, match="victim_pool \\+ shadow_pool = 80"):
        make_split(index, {**SIZES, "victim_pool": 40, "shadow_pool": 40}, seed=0)


def test_reference_universe_and_reference_training_sets():
    from segmia.data.split import reference_training_rows, reference_universe

    index = generate(
        "synthetic_ct", dict(groups=60, group_size=2, height=16, width=16, noise=0.3, seed=0)
    )[2]
    sizes = dict(victim_pool=50, shadow_pool=60, train_size=20, val_size=10, mia_size=8)
    split = make_split(index, sizes, seed=0)
    universe = reference_universe(split, 20, sizes)
    members, nonmembers = mia_indices(split, "victim", 20, sizes)
    targets = universe[universe["part"] == "target"]
    assert list(targets["row"]) == list(members) + list(nonmembers)
    assert list(targets["member"]) == [1] * 8 + [0] * 8
    filler = universe[universe["part"] == "filler"]
    assert len(targets) + len(filler) == 2 * 20
    assert set(split.loc[filler["row"], "pool"]) == {"shadow"}
    population = set(universe.loc[universe["part"] == "population", "row"])
    assert population and not population & set(
        universe.loc[universe["part"] != "population", "row"]
    )
    halves = [reference_training_rows(split, 20, sizes, seed=0, index=k) for k in range(16)]
    assert all(len(h) == 20 for h in halves)
    assert all(not set(h) & population for h in halves)
    assert list(halves[3]) == list(reference_training_rows(split, 20, sizes, seed=0, index=3))
    counts = np.array([sum(r in set(h) for h in halves) for r in targets["row"]])
    assert counts.min() >= 2 and counts.max() <= 14 and abs(counts.mean() - 8) < 2
