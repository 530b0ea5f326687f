"""Seeded, group-aware assignment of samples to pools and roles.

Every sample gets a ``pool`` (``victim``, ``shadow`` or ``unused``) and, inside its pool, a
``role``:

- ``val``: validation set of the pool's models (``val_size`` samples),
- ``nonmember``: held-out MIA non-members (``mia_size`` samples; with ``nonmembers:
  validation`` none are allocated and the validation samples serve as non-members),
- ``train``: training candidates, ranked by ``order``; a model with training-set size N trains on
  the samples with ``order < N``, and its MIA members are those with ``order < min(mia_size, N)``,
- ``unused``: left over (the tail of a group cut to hit a size exactly).

Groups (patients, cities, sequences) are assigned whole, in a seeded random order, so no group is
in two pools or two roles; only the last group of a role can be cut short, its tail becoming
``unused``. With ``group_aware: false`` every sample is its own group (the original code's quirk).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError

POOLS = ("victim", "shadow")
ROLES = ("val", "nonmember", "train")
COLUMNS = ["sample_id", "group", "pool", "role", "order"]


def _take(
    groups: list[np.ndarray], want: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Take whole groups from the front until ``want`` samples; return (taken, rest, cut tail)."""
    taken, count = [], 0
    while groups and count < want:
        g = groups.pop(0)
        taken.append(g)
        count += len(g)
    tail = np.array([], dtype=np.int64)
    if count > want:
        last = taken[-1]
        keep = len(last) - (count - want)
        taken[-1], tail = last[:keep], last[keep:]
    return taken, groups, tail


def roles(sizes: dict) -> tuple[str, ...]:
    """Roles allocated in a pool: non-members may be taken from the validation set instead."""
    return ("val", "train") if sizes.get("nonmembers") == "validation" else ROLES


def make_split(index: pd.DataFrame, sizes: dict, seed: int, where: str = "dataset") -> pd.DataFrame:
    """Split ``index`` (columns sample_id, group) into pools and roles; deterministic in ``seed``."""
    n = len(index)
    need = sizes["victim_pool"] + sizes["shadow_pool"]
    if need > n:
        raise DataError(
            f"{where}: the split asks for victim_pool + shadow_pool = {need} samples but the "
            f"prepared dataset has {n}. Shrink the pools in the config or prepare more data."
        )
    rng = np.random.default_rng(seed)
    keys = (
        index["group"].astype(str).to_numpy()
        if sizes.get("group_aware", True)
        else np.arange(n).astype(str)
    )
    # a seeded permutation of the groups, samples kept in their original order inside a group
    uniq, inverse = np.unique(keys, return_inverse=True)
    group_order = rng.permutation(len(uniq))
    groups = [np.flatnonzero(inverse == g) for g in group_order]

    pool = np.full(n, "unused", dtype=object)
    role = np.full(n, "unused", dtype=object)
    order = np.full(n, -1, dtype=np.int64)
    for name in POOLS:
        # the cut tail of the pool's last group stays out of both pools ("unused")
        pool_groups, groups, _ = _take(groups, sizes[f"{name}_pool"])
        for r in roles(sizes):
            want = (
                sizes["val_size"] if r == "val" else sizes["mia_size"] if r == "nonmember" else None
            )
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
    split = pd.DataFrame(
        {
            "sample_id": index["sample_id"].astype(str).to_numpy(),
            "group": index["group"].astype(str).to_numpy(),
            "pool": pool,
            "role": role,
            "order": order,
        }
    )
    for name in POOLS:
        counts = split.loc[split["pool"] == name, "role"].value_counts()
        need = {"val": sizes["val_size"], "nonmember": sizes["mia_size"]}
        for r, want in need.items():
            if r not in roles(sizes):
                continue
            if counts.get(r, 0) < want:
                raise DataError(
                    f"{where}: the {name} pool ({sizes[f'{name}_pool']} samples) could not fill "
                    f"{r} with {want} samples. Enlarge the pool or shrink the sizes."
                )
    return split


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
    split: pd.DataFrame, size: int, sizes: dict, seed: int, index: int
) -> np.ndarray:
    """Training rows of reference model ``index``: a random half of the targets and filler.

    Drawn from a generator seeded by (seed, index) alone, so model k is the same whatever the
    number of reference models a study asks for; each candidate is a member of about half of
    them (the membership of every model is written to its ``members.csv``).
    """
    from ..runtime import stable_seed

    universe = reference_universe(split, size, sizes)
    pool = universe.loc[universe["part"] != "population", "row"].to_numpy()
    rng = np.random.default_rng(stable_seed("reference", seed, index))
    return np.sort(rng.permutation(pool)[: len(pool) // 2])
