"""Synthetic datasets, the prepared format and the split."""

import numpy as np
import pandas as pd
import pytest
from segmia.data.prepared import load_prepared, write_prepared
from segmia.data.split import POOLS, make_split, mia_indices, role_indices, train_indices
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
    split = make_split(index, {**SIZES, "groups": "none"}, seed=0)
    used = split[split["role"] != "unused"]
    assert (used.groupby("group")["pool"].nunique() > 1).any()
    assert (used.groupby("group")["role"].nunique() > 1).any()
    _check_split_counts(split, SIZES)
    assert split.equals(make_split(index, {**SIZES, "groups": "none"}, seed=0))


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
    # per sample (the draw of split.groups pools/ordered/none): exactly N each; the group-level
    # draw of split.groups whole is tested in test_reference_models.py
    halves = [reference_training_rows(split, 20, sizes, 0, k, "sample") for k in range(16)]
    assert all(len(h) == 20 for h in halves)
    assert all(not set(h) & population for h in halves)
    assert list(halves[3]) == list(reference_training_rows(split, 20, sizes, 0, 3, "sample"))
    counts = np.array([sum(r in set(h) for h in halves) for r in targets["row"]])
    assert counts.min() >= 2 and counts.max() <= 14 and abs(counts.mean() - 8) < 2


# --- the membership unit (split.groups) and the feasibility of every role ---------------------

#: the real Cityscapes train split: finely annotated images per city (2975, 18 cities)
CITYSCAPES_CITIES = dict(
    aachen=174,
    bochum=96,
    bremen=316,
    cologne=154,
    darmstadt=85,
    dusseldorf=221,
    erfurt=109,
    hamburg=248,
    hanover=196,
    jena=119,
    krefeld=99,
    monchengladbach=94,
    strasbourg=365,
    stuttgart=196,
    tubingen=144,
    ulm=95,
    weimar=142,
    zurich=122,
)
#: the paper config's Cityscapes split; the training-size study needs N up to 600
CITYSCAPES = dict(victim_pool=1400, shadow_pool=1400, train_size=600, val_size=400, mia_size=400)


def _index(group_sizes: dict) -> pd.DataFrame:
    rows = [(f"{g}_{i:06d}", g) for g, k in group_sizes.items() for i in range(k)]
    return pd.DataFrame(rows, columns=["sample_id", "group"])


def _check_split_counts(split: pd.DataFrame, sizes: dict) -> None:
    """Every role of both pools at its exact size."""
    for pool in ("victim", "shadow"):
        in_pool = split[split["pool"] == pool]
        assert (in_pool["role"] == "val").sum() == sizes["val_size"]
        assert (in_pool["role"] == "nonmember").sum() == sizes["mia_size"]
        train = in_pool[in_pool["role"] == "train"]
        assert len(train) == sizes[f"{pool}_pool"] - sizes["val_size"] - sizes["mia_size"]
        assert sorted(train["order"]) == list(range(len(train)))


def test_cityscapes_split_fits_on_the_real_city_sizes_with_groups_pools():
    from segmia.data.sources.cityscapes import TRAIN_CITY_SIZES

    assert TRAIN_CITY_SIZES == CITYSCAPES_CITIES and sum(TRAIN_CITY_SIZES.values()) == 2975
    index = _index(CITYSCAPES_CITIES)
    sizes = {**CITYSCAPES, "groups": "pools"}
    candidates = {}
    for seed in (0, 1, 2):
        split = make_split(index, sizes, seed, where="dataset 'cityscapes'", need_train=600)
        _check_split_counts(split, sizes)
        used = split[split["role"] != "unused"]
        for pool in ("victim", "shadow"):
            candidates[(seed, pool)] = int(
                ((used["pool"] == pool) & (used["role"] == "train")).sum()
            )
            assert candidates[(seed, pool)] >= 600
            # members and non-members come from the same cities
            rows = used[used["pool"] == pool]
            members = set(rows.loc[(rows["role"] == "train") & (rows["order"] < 400), "group"])
            nonmembers = set(rows.loc[rows["role"] == "nonmember", "group"])
            assert nonmembers == members == set(rows["group"])
        # cities are whole between the victim's and the attacker's pools
        pools = split[split["pool"] != "unused"].groupby("group")["pool"].nunique()
        assert (pools == 1).all()
        assert split.equals(make_split(index, sizes, seed, need_train=600))
    print("cityscapes training candidates (groups: pools):", candidates)


def test_whole_cities_per_role_leave_too_few_training_candidates_in_one_message():
    index = _index(CITYSCAPES_CITIES)
    available = {}
    for seed in (0, 1, 2):
        split = make_split(index, CITYSCAPES, seed, need_train=1)
        for pool in ("victim", "shadow"):
            rows = split[(split["pool"] == pool) & (split["role"] == "train")]
            available[(seed, pool)] = len(rows)
    print("cityscapes training candidates (groups: whole):", available)
    assert max(available.values()) < 600
    with pytest.raises(DataError) as info:
        make_split(index, CITYSCAPES, 0, where="dataset 'cityscapes'", need_train=600)
    message = str(info.value)
    for word in [
        "dataset 'cityscapes'",
        "seed 0",
        "victim pool",
        "role train",
        "needs 600",
        f"has {available[(0, 'victim')]} training candidates",
        "split.groups: pools",
    ]:
        assert word in message, message
    assert "\n" not in message


def test_whole_groups_report_a_short_held_out_role():
    # a pool of 8 is one group of 8; val_size 4 cuts it and leaves its tail unused: no non-members
    index = _index({"a": 8, "b": 8, "c": 8})
    sizes = dict(victim_pool=8, shadow_pool=8, train_size=2, val_size=4, mia_size=2)
    with pytest.raises(DataError) as info:
        make_split(index, sizes, seed=0, where="dataset 'abc'")
    message = str(info.value)
    for word in ["dataset 'abc', seed 0", "victim pool", "role nonmember", "needs 2", "has 0"]:
        assert word in message, message
    assert make_split(index, {**sizes, "groups": "ordered"}, seed=0) is not None


def test_ordered_layout_is_contiguous_in_group_order_and_exact():
    index = _index(CITYSCAPES_CITIES)
    sizes = {**CITYSCAPES, "groups": "ordered"}
    split = make_split(index, sizes, seed=1, need_train=600)
    _check_split_counts(split, sizes)
    # the seeded group order is the one of groups: whole (same seed), samples laid out in it
    rng = np.random.default_rng(1)
    cities = np.unique(index["group"])[rng.permutation(index["group"].nunique())]
    flat = np.concatenate([np.flatnonzero(index["group"] == c) for c in cities])
    expected = ["val"] * 400 + ["nonmember"] * 400 + ["train"] * 600
    assert list(split.loc[flat[:1400], "pool"]) == ["victim"] * 1400
    assert list(split.loc[flat[:1400], "role"]) == expected
    assert list(split.loc[flat[1400:2800], "pool"]) == ["shadow"] * 1400
    assert list(split.loc[flat[1400:2800], "role"]) == expected
    assert set(split.loc[flat[2800:], "pool"]) == {"unused"}
    assert list(split.loc[flat[800:1400], "order"]) == list(range(600))
    # so a city can straddle the two pools and two roles
    used = split[split["pool"] != "unused"]
    assert (used.groupby("group")["pool"].nunique() > 1).any()
    assert (used.groupby("group")["role"].nunique() > 1).any()


def test_groups_pools_on_synthetic_patients():
    index = generate("synthetic_ct", CT)[2]
    sizes = {**SIZES, "groups": "pools"}
    split = make_split(index, sizes, seed=2)
    _check_split_counts(split, sizes)
    pools = split[split["pool"] != "unused"].groupby("group")["pool"].nunique()
    assert (pools == 1).all()
    assert (split[split["role"] != "unused"].groupby("group")["role"].nunique() > 1).any()
    assert not split["role"].equals(make_split(index, sizes, seed=3)["role"])


def test_groups_pools_exact_search_and_infeasible_groups(monkeypatch):
    import segmia.data.split as split_module

    # no random order tried: the exact subset-sum search must find a partition
    monkeypatch.setattr(split_module, "POOL_SEARCH_TRIES", 0)
    index = _index({"a": 7, "b": 5, "c": 4, "d": 3, "e": 2})
    sizes = dict(
        victim_pool=9, shadow_pool=11, train_size=3, val_size=3, mia_size=3, groups="pools"
    )
    for seed in range(4):
        _check_split_counts(make_split(index, sizes, seed), sizes)
    # 10 + 3: no whole groups give both pools 6 samples
    with pytest.raises(DataError) as info:
        make_split(
            _index({"big": 10, "small": 3}),
            dict(
                victim_pool=6, shadow_pool=6, train_size=2, val_size=2, mia_size=2, groups="pools"
            ),
            seed=5,
            where="dataset 'x'",
        )
    message = str(info.value)
    for word in ["dataset 'x'", "seed 5", "victim pool", "at most 3", "6 samples", "ordered"]:
        assert word in message, message


def test_training_candidates_checked_against_the_largest_training_size():
    index = generate("synthetic_ct", CT)[2]
    split = make_split(index, SIZES, seed=0)
    have = {p: int(((split["pool"] == p) & (split["role"] == "train")).sum()) for p in POOLS}
    make_split(index, SIZES, seed=0, need_train=have)
    more = have["victim"] + 1
    with pytest.raises(DataError, match=f"victim pool .* needs {more} .*largest training size"):
        make_split(index, SIZES, seed=0, need_train={"victim": more})
    with pytest.raises(DataError, match="shadow pool"):
        make_split(index, SIZES, seed=0, need_train={"shadow": have["shadow"] + 1})
    # the exact layouts fill every role, so only sizes that do not add up fall short
    small = {**SIZES, "groups": "ordered", "victim_pool": 15}
    with pytest.raises(DataError, match=r"victim pool \(15 samples\) has 2 training candidates"):
        make_split(index, small, seed=0)


def test_synthetic_index_is_the_generators():
    from segmia.data.synthetic import synthetic_index

    for source, params in (("synthetic_ct", CT), ("synthetic_scenes", SCENES)):
        index = generate(source, params)[2]
        assert index.equals(synthetic_index(source, params["groups"], params["group_size"]))
