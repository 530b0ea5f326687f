"""Seeded assignment of samples to pools and roles, with a configurable membership unit.

Every sample gets a ``pool`` (``victim``, ``shadow`` or ``unused``) and, inside its pool, a
``role``:

- ``val``: validation set of the pool's models (``val_size`` samples),
- ``nonmember``: held-out MIA non-members (``mia_size`` samples; with ``nonmembers:
  validation`` none are allocated and the validation samples serve as non-members),
- ``train``: training candidates, ranked by ``order``; a model with training-set size N trains on
  the samples with ``order < N``, and its MIA members are those with ``order < min(mia_size, N)``,
- ``unused``: left over (the tail of a group cut to hit a size exactly, a pool's surplus).

``split.groups`` says what stays whole (the membership unit):

- ``whole`` (default): groups (patients, cities, images, sequences) are assigned whole, in a
  seeded random order, so no group is in two pools or two roles; only the last group of a pool or
  role can be cut short, its tail becoming ``unused`` (so a pool can end up with fewer training
  candidates than ``pool - val_size - mia_size``). The privacy unit is the group.
- ``pools``: groups are whole between the victim's and the attacker's (shadow) pools, found by a
  seeded random search over group orders (bounded tries, then an exact subset-sum search) for
  whole groups that give each pool at least its size; inside a pool the roles are drawn per
  sample at random, so members and non-members come from the same groups, and the pool's surplus
  samples beyond its size are ``unused`` (drawn at random).
- ``ordered``: the original code's layout: groups in a seeded random order (the original used the
  filesystem order, city by city), samples laid out contiguously, pools and then roles cut at
  exact sample counts, so a group can straddle two pools or two roles.
- ``none``: every sample is its own group (the original code's sample-level liver/Kvasir split).

:func:`make_split` checks every role of both pools (validation, non-members, and the training
candidates against the largest training size any model of the dataset needs) and raises one
:class:`DataError` naming the shortfall; the config check runs it before any job is planned.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError
from .names import GROUPINGS, POOLS, REFERENCE_UNITS

ROLES = ("val", "nonmember", "train")
COLUMNS = ["sample_id", "group", "pool", "role", "order"]
#: ``groups: pools``: random group orders tried before the exact subset-sum search
POOL_SEARCH_TRIES = 200


def _take(
    groups: list[np.ndarray], want: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Take whole groups from the front until ``want`` samples; return (taken, rest, cut tail)."""
    k, count = 0, 0
    while k < len(groups) and count < want:
        count += len(groups[k])
        k += 1
    taken, tail = groups[:k], np.array([], dtype=np.int64)
    if count > want:
        last = taken[-1]
        keep = len(last) - (count - want)
        taken[-1], tail = last[:keep], last[keep:]
    return taken, groups[k:], tail


def roles(sizes: dict) -> tuple[str, ...]:
    """Roles allocated in a pool: non-members may be taken from the validation set instead."""
    return ("val", "train") if sizes.get("nonmembers") == "validation" else ROLES


def _role_size(sizes: dict, r: str) -> int | None:
    """Samples of role ``r`` in a pool (None: the training candidates take the rest)."""
    return sizes["val_size"] if r == "val" else sizes["mia_size"] if r == "nonmember" else None


def _seeded_groups(index: pd.DataFrame, mode: str, rng) -> list[np.ndarray]:
    """Row indices of each group (rows in index order), the groups in a seeded random order."""
    n = len(index)
    keys = index["group"].astype(str).to_numpy() if mode != "none" else np.arange(n).astype(str)
    uniq, inverse = np.unique(keys, return_inverse=True)
    group_order = rng.permutation(len(uniq))
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    return [members[g] for g in group_order]


def _lay_out(block: np.ndarray, name: str, sizes: dict, pool, role, order) -> None:
    """Cut ``block`` (a pool's samples, in layout order) into its roles at exact counts."""
    pool[block] = name
    start = 0
    for r in roles(sizes):
        want = _role_size(sizes, r)
        stop = start + want if want is not None else len(block)
        rows = block[start:stop]
        role[rows] = r
        if r == "train":
            order[rows] = np.arange(rows.size)
        start = stop


def _split_whole(groups: list[np.ndarray], sizes: dict, pool, role, order) -> None:
    """Whole groups per pool and per role; the cut tail of a role's last group is unused."""
    for name in POOLS:
        # the cut tail of the pool's last group stays out of both pools ("unused")
        pool_groups, groups, _ = _take(groups, sizes[f"{name}_pool"])
        for r in roles(sizes):
            want = _role_size(sizes, r)
            if want is None:
                taken, pool_groups, tail = pool_groups, [], np.array([], dtype=np.int64)
            else:
                taken, pool_groups, tail = _take(pool_groups, want)
            idx = np.concatenate(taken) if taken else np.array([], dtype=np.int64)
            pool[idx] = name
            role[idx] = r
            if r == "train":
                order[idx] = np.arange(idx.size)
            if tail.size:
                pool[tail] = name  # cut short: in the pool (so never in another) but unused


def _split_ordered(groups: list[np.ndarray], sizes: dict, pool, role, order) -> None:
    """The original code's layout: samples contiguous in group order, cut at exact counts."""
    flat = np.concatenate(groups)
    start = 0
    for name in POOLS:
        stop = start + sizes[f"{name}_pool"]
        _lay_out(flat[start:stop], name, sizes, pool, role, order)
        start = stop


def _partition(counts: np.ndarray, want: tuple[int, int], rng) -> tuple[list, list] | int:
    """Groups (positions in ``counts``) for the two pools, each summing to at least its size.

    First random group orders (each a greedy fill of the victim's pool that skips a group which
    would leave the shadow's pool too little), then an exact subset-sum search; returns the
    largest victim pool whole groups allow (an int) when no partition exists.
    """
    total = int(counts.sum())
    low, high = want[0], total - want[1]  # the victim's pool must sum to [low, high]
    for attempt in range(POOL_SEARCH_TRIES):
        groups = np.arange(len(counts)) if attempt == 0 else rng.permutation(len(counts))
        victim, filled = [], 0
        for g in groups:
            if filled >= low:
                break
            if filled + counts[g] <= high:
                victim.append(int(g))
                filled += int(counts[g])
        if filled >= low:
            taken = set(victim)
            return victim, _fill([int(g) for g in groups if g not in taken], counts, want[1])
    # exact: reach[k] = bit set of the sums reachable with the first k groups
    reach = [1]
    for c in counts:
        reach.append(reach[-1] | (reach[-1] << int(c)))
    window = (reach[-1] >> low) & ((1 << (high - low + 1)) - 1) if high >= low else 0
    if not window:
        below = reach[-1] & ((1 << low) - 1)
        return below.bit_length() - 1
    target = low + (window & -window).bit_length() - 1  # the smallest reachable sum in range
    victim = []
    for k in range(len(counts), 0, -1):
        if not (reach[k - 1] >> target) & 1:
            victim.append(k - 1)
            target -= int(counts[k - 1])
    taken = set(victim)
    return victim, _fill([g for g in range(len(counts)) if g not in taken], counts, want[1])


def _fill(groups: list[int], counts: np.ndarray, want: int) -> list[int]:
    taken, filled = [], 0
    for g in groups:
        if filled >= want:
            break
        taken.append(g)
        filled += int(counts[g])
    return taken


def _split_pools(
    groups: list[np.ndarray], sizes: dict, pool, role, order, rng, where: str, seed: int
) -> None:
    """Whole groups per pool; roles drawn per sample; a pool's surplus samples are unused."""
    want = (sizes["victim_pool"], sizes["shadow_pool"])
    found = _partition(np.array([len(g) for g in groups]), want, rng)
    if isinstance(found, int):
        raise DataError(
            f"{where}, seed {seed}: no assignment of whole groups gives the victim pool "
            f"{want[0]} and the shadow pool {want[1]} samples (split.groups: pools): with the "
            f"shadow pool filled, the victim pool (all roles) can get at most {found} of the "
            f"{want[0]} samples it needs. Fix: shrink split.victim_pool or split.shadow_pool, or "
            "set split.groups to ordered or none (groups may then straddle the pools)."
        )
    for name, chosen, size in zip(POOLS, found, want, strict=True):
        rows = rng.permutation(np.sort(np.concatenate([groups[g] for g in chosen])))
        pool[rows] = name  # the surplus beyond the pool's size: its group's pool, but unused
        _lay_out(rows[:size], name, sizes, pool, role, order)


def _train_needs(sizes: dict, need_train) -> dict[str, int]:
    if need_train is None:
        return {name: int(sizes["train_size"]) for name in POOLS}
    if isinstance(need_train, dict):
        return {name: int(need_train.get(name, sizes["train_size"])) for name in POOLS}
    return {name: int(need_train) for name in POOLS}


def _shortfall(
    where: str, seed: int, name: str, r: str, needed: int, available: int, sizes: dict
) -> str:
    mode = sizes.get("groups", "whole")
    noun = {
        "val": "validation samples",
        "nonmember": "held-out MIA non-members",
        "train": "training candidates",
    }[r]
    why = {
        "val": "split.val_size",
        "nonmember": "split.mia_size",
        "train": "the largest training size of the dataset's models",
    }[r]
    message = (
        f"{where}, seed {seed}: the {name} pool ({sizes[f'{name}_pool']} samples) has {available} "
        f"{noun} (role {r}) but needs {needed} ({why})."
    )
    shrink = {"val": "split.val_size", "nonmember": "split.mia_size", "train": "the training sizes"}
    if mode == "whole":
        return (
            f"{message} With split.groups: whole every group (patient, city, image) lies in one "
            "pool and one role, and the cut-off tail of each pool's and role's last group is "
            "left unused, so the roles come out short of the sizes. Fix: set split.groups: "
            "pools (groups whole only between the victim's and the attacker's pools, roles drawn "
            f"per sample), or enlarge split.{name}_pool, or shrink {shrink[r]}."
        )
    return f"{message} Fix: enlarge split.{name}_pool or shrink {shrink[r]}."


def make_split(
    index: pd.DataFrame,
    sizes: dict,
    seed: int,
    where: str = "dataset",
    need_train: int | dict[str, int] | None = None,
) -> pd.DataFrame:
    """Split ``index`` (columns sample_id, group) into pools and roles; deterministic in ``seed``.

    ``need_train``: the training candidates each pool must offer (an int for both pools or
    {pool: count}; default ``sizes["train_size"]``): the largest training size any model of the
    dataset trains on. Every shortfall of a role raises one :class:`DataError`.
    """
    n = len(index)
    need = sizes["victim_pool"] + sizes["shadow_pool"]
    if need > n:
        raise DataError(
            f"{where}: the split asks for victim_pool + shadow_pool = {need} samples but the "
            f"prepared dataset has {n}. Shrink the pools in the config or prepare more data."
        )
    mode = sizes.get("groups", "whole")
    if mode not in GROUPINGS:
        raise DataError(
            f"{where}: split.groups is {mode!r}; allowed values: {', '.join(GROUPINGS)}."
        )
    rng = np.random.default_rng(seed)
    groups = _seeded_groups(index, mode, rng)
    pool = np.full(n, "unused", dtype=object)
    role = np.full(n, "unused", dtype=object)
    order = np.full(n, -1, dtype=np.int64)
    if mode in ("whole", "none"):
        _split_whole(groups, sizes, pool, role, order)
    elif mode == "ordered":
        _split_ordered(groups, sizes, pool, role, order)
    else:
        _split_pools(groups, sizes, pool, role, order, rng, where, seed)
    split = pd.DataFrame(
        {
            "sample_id": index["sample_id"].astype(str).to_numpy(),
            "group": index["group"].astype(str).to_numpy(),
            "pool": pool,
            "role": role,
            "order": order,
        }
    )
    check_split(split, sizes, seed, where, need_train)
    return split


def role_counts(split: pd.DataFrame) -> dict[tuple[str, str], int]:
    """{(pool, role): samples} of a split."""
    return {k: int(v) for k, v in split.groupby(["pool", "role"]).size().items()}


def check_split(
    split: pd.DataFrame,
    sizes: dict,
    seed: int,
    where: str = "dataset",
    need_train: int | dict[str, int] | None = None,
) -> None:
    """Raise one :class:`DataError` for the first role of a pool short of what it must hold."""
    counts = role_counts(split)
    train = _train_needs(sizes, need_train)
    for name in POOLS:
        for r in roles(sizes):
            size = _role_size(sizes, r)
            needed = train[name] if size is None else size
            available = counts.get((name, r), 0)
            if available < needed:
                raise DataError(_shortfall(where, seed, name, r, needed, available, sizes))


def read_split(path) -> pd.DataFrame:
    from ..io import read_csv

    split = read_csv(path, required=tuple(COLUMNS))
    split["sample_id"] = split["sample_id"].astype(str)
    split["group"] = split["group"].astype(str)
    return split


def train_indices(split: pd.DataFrame, pool: str, size: int) -> np.ndarray:
    """Row indices of the ``size`` training samples of ``pool`` (in training order)."""
    sel = split[(split["pool"] == pool) & (split["role"] == "train") & (split["order"] < size)]
    if len(sel) < size:
        raise DataError(
            f"the {pool} pool has only {int(((split['pool'] == pool) & (split['role'] == 'train')).sum())} "
            f"training candidates, fewer than the training size {size}. Shrink train_size or "
            "enlarge the pool."
        )
    return sel.sort_values("order").index.to_numpy()


def role_indices(split: pd.DataFrame, pool: str, role: str) -> np.ndarray:
    return split.index[(split["pool"] == pool) & (split["role"] == role)].to_numpy()


def mia_indices(
    split: pd.DataFrame, pool: str, size: int, sizes: dict
) -> tuple[np.ndarray, np.ndarray]:
    """(members, non-members) of the MIA set of the model of ``pool`` with training size ``size``.

    Members are the first min(mia_size, size) training samples, non-members as many held-out
    samples (validation samples with ``nonmembers: validation``): the set is balanced 50/50.
    """
    k = min(sizes["mia_size"], size)
    members = train_indices(split, pool, size)[:k]
    source = "val" if sizes.get("nonmembers") == "validation" else "nonmember"
    nonmembers = role_indices(split, pool, source)[:k]
    return members, nonmembers


# --- reference models (LiRA, RMIA) --------------------------------------------------------------


def reference_universe(split: pd.DataFrame, size: int, sizes: dict) -> pd.DataFrame:
    """The samples the attacker's reference models are built on and queried on.

    ``part`` is ``target`` for the victim's MIA candidates (``member`` 1/0 = the victim's
    membership), ``filler`` for attacker-pool training candidates that bring the universe to 2N
    samples (so a random half is a training set of the victim's size N), and ``population`` for
    further attacker-pool samples (validation and held-out roles) that no reference model trains
    on: RMIA's population z. Columns: row, sample_id, part, member (-1 outside the targets).
    """
    members, nonmembers = mia_indices(split, "victim", size, sizes)
    candidates = split[(split["pool"] == "shadow") & (split["role"] == "train")].sort_values(
        "order"
    )
    filler = candidates.index.to_numpy()[: max(0, 2 * size - len(members) - len(nonmembers))]
    population = split.index[
        (split["pool"] == "shadow") & split["role"].isin(["val", "nonmember"])
    ].to_numpy()
    rows = np.concatenate([members, nonmembers, filler, population])
    part = (
        ["target"] * (len(members) + len(nonmembers))
        + ["filler"] * len(filler)
        + ["population"] * len(population)
    )
    member = np.r_[
        np.ones(len(members), int),
        np.zeros(len(nonmembers), int),
        -np.ones(len(filler) + len(population), int),
    ]
    return pd.DataFrame(
        {
            "row": rows,
            "sample_id": split.loc[rows, "sample_id"].to_numpy(),
            "part": part,
            "member": member,
        }
    )


def reference_training_rows(
    split: pd.DataFrame, size: int, sizes: dict, seed: int, index: int, unit: str
) -> np.ndarray:
    """Training rows of reference model ``index``: about half of the targets and filler, drawn at
    the membership ``unit`` (``group``: the split's groups, ``sample``: each row on its own).

    The units, in an order seeded by (seed, index) alone (so model k is the same whatever the
    number of reference models a study asks for, and whatever its training variant), are taken
    whole while the rows taken stay below half the candidates (N: the universe holds 2N); the
    unit that crosses N is taken when that ends closer to N than leaving it out. A model thus
    trains on N rows, give or take half a group, and each unit is IN for about half of the
    models; with one row per unit this is exactly a random half. The membership of every model
    is written to its ``members.csv``.
    """
    from ..runtime import stable_seed

    if unit not in REFERENCE_UNITS:
        raise DataError(
            f"reference models draw their training sets per {' or per '.join(REFERENCE_UNITS)}, "
            f"not per {unit!r}."
        )
    universe = reference_universe(split, size, sizes)
    pool = universe.loc[universe["part"] != "population", "row"].to_numpy()
    keys = split.loc[pool, "group"].astype(str).to_numpy() if unit == "group" else pool
    # the units in order of first appearance: with one row per unit, the permutation below is
    # the per-row draw of earlier versions (the same rows for the same seed and index)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))[inverse]  # each row's unit, numbered by appearance
    units = np.split(np.argsort(rank, kind="stable"), np.cumsum(np.bincount(rank))[:-1])
    rng = np.random.default_rng(stable_seed("reference", seed, index))
    half, taken, count = len(pool) // 2, [], 0
    for u in rng.permutation(len(units)):
        # below N: take the unit if that ends at least as close to N as leaving it out
        if count >= half or count + len(units[u]) - half > half - count:
            break
        taken.append(units[u])
        count += len(units[u])
    return np.sort(pool[np.concatenate(taken)]) if taken else np.array([], dtype=np.int64)
