"""The reference-attack step end to end on fake model directories: it reads each model's
members.csv, its answers on the reference universe, and scores only the victim's MIA targets."""

import numpy as np
import pandas as pd
import pytest
from segmia.attacks.job import reference_attacks_job
from segmia.attacks.names import REFERENCE
from segmia.data.prepared import write_prepared
from segmia.io import write_csv, write_npy

N_TARGET, N_POP, K = 60, 40, 8


def _fake(tmp_path, effect: float):
    rng = np.random.default_rng(0)
    n = N_TARGET + N_POP
    masks = (rng.random((n, 8, 8)) > 0.5).astype(np.uint8)
    ids = [f"s{i}" for i in range(n)]
    write_prepared(
        tmp_path / "data",
        rng.integers(0, 255, (n, 1, 8, 8), dtype=np.uint8),
        masks,
        pd.DataFrame({"sample_id": ids, "group": ids}),
        {"name": "f", "source": "synthetic_ct", "num_classes": 2, "ignore_index": None},
    )
    victim_members = np.arange(N_TARGET) < N_TARGET // 2
    universe = pd.DataFrame(
        {
            "sample_id": ids,
            "row": np.arange(n),
            "member": np.r_[victim_members.astype(int), -np.ones(N_POP, int)],
            "part": ["target"] * N_TARGET + ["population"] * N_POP,
        }
    )
    difficulty = rng.normal(0, 1.0, n)  # per-sample: some images are easy for every model

    def model(name, trained_on):
        d = tmp_path / name
        # a victim's answers on the reference universe; a reference model's are its own query
        query = d / "queries" / ("reference" if name == "victim" else "mia")
        confidence = (
            1.0 + difficulty + effect * np.isin(np.arange(n), trained_on) + rng.normal(0, 0.3, n)
        )
        logits = (masks * 2.0 - 1.0) * confidence[:, None, None]
        write_npy(query / "logits.npy", logits[:, None].astype(np.float16))
        write_csv(query / "samples.csv", universe)
        write_csv(
            d / "members.csv",
            pd.DataFrame({"row": trained_on, "sample_id": [ids[i] for i in trained_on]}),
        )
        return d

    victim = model("victim", np.flatnonzero(victim_members))
    refs = [model(f"ref{k}", np.sort(rng.permutation(N_TARGET)[: N_TARGET // 2])) for k in range(K)]
    return victim, refs


@pytest.mark.parametrize(("effect", "expect"), [(2.0, "detected"), (0.0, "chance")])
def test_reference_attacks_detect_a_planted_effect_and_not_a_null_one(tmp_path, effect, expect):
    victim, refs = _fake(tmp_path, effect)
    spec = {
        "dataset": "f",
        "attack": "reference",
        "release_name": "none",
        "release": {"type": "none"},
        "seed": 0,
        "train_size": 30,
        "victim": {"arch": "a", "variant": "none"},
        "shadow": {"arch": "a", "variant": f"refs{K}"},
    }
    outs = {a: tmp_path / "out" / a for a in REFERENCE}
    results = reference_attacks_job(
        victim=victim, references=refs, data_dir=tmp_path / "data", spec=spec, out_dirs=outs
    )
    assert set(results) == set(REFERENCE)
    for name, metrics in results.items():
        assert metrics["n_members"] == metrics["n_nonmembers"] == N_TARGET // 2, name
        scores = pd.read_csv(outs[name] / "scores.csv")
        assert len(scores) == N_TARGET  # population samples are never scored
        if expect == "detected":
            assert metrics["auc"] > 0.8, (name, metrics["auc"])
        else:
            assert 0.3 < metrics["auc"] < 0.7, (name, metrics["auc"])


def _spec(**rmia) -> dict:
    return {
        "dataset": "f",
        "attack": "reference",
        "release_name": "none",
        "release": {"type": "none"},
        "seed": 0,
        "train_size": 30,
        "victim": {"arch": "a", "variant": "none"},
        "shadow": {"arch": "a", "variant": f"refs{K}"},
        **rmia,
    }


def _rmia(tmp_path, victim, refs, name: str, **rmia) -> tuple[dict, pd.DataFrame]:
    outs = {a: tmp_path / name / a for a in REFERENCE}
    metrics = reference_attacks_job(
        victim=victim,
        references=refs,
        data_dir=tmp_path / "data",
        spec=_spec(**rmia),
        out_dirs=outs,
    )
    return metrics["rmia_offline"], pd.read_csv(outs["rmia_offline"] / "scores.csv")


def test_rmia_tunes_a_on_the_references_or_uses_the_given_one(tmp_path):
    from segmia.io import read_json

    victim, refs = _fake(tmp_path, 2.0)
    tuned, tuned_scores = _rmia(tmp_path, victim, refs, "tuned", rmia_a="tune")
    grid = tuned["rmia_a_grid"]
    assert [float(a) for a in grid] == pytest.approx(np.linspace(0, 1, 11))
    assert tuned["rmia_a"] == float(max(grid, key=grid.get))  # the grid's best mean AUC
    on_disk = read_json(tmp_path / "tuned" / "rmia_offline" / "metrics.json")
    assert on_disk["rmia_a"] == tuned["rmia_a"] and on_disk["rmia_a_grid"] == grid
    # the tuned a is the one the offline attack ran with
    fixed, fixed_scores = _rmia(tmp_path, victim, refs, "fixed", rmia_a=tuned["rmia_a"])
    assert fixed["rmia_a"] == tuned["rmia_a"] and fixed["rmia_a_grid"] is None
    assert np.array_equal(fixed_scores["score"], tuned_scores["score"])
    # a given a is used as is
    other = 1.0 if tuned["rmia_a"] != 1.0 else 0.0
    given, given_scores = _rmia(tmp_path, victim, refs, "given", rmia_a=other)
    assert given["rmia_a"] == other and given["rmia_a_grid"] is None
    assert not np.array_equal(given_scores["score"], tuned_scores["score"])


def test_rmia_population_size_and_score_resolution(tmp_path):
    from segmia.errors import DataError
    from segmia.io import read_json

    victim, refs = _fake(tmp_path, 2.0)
    m = 8
    metrics, scores = _rmia(tmp_path, victim, refs, "m8", rmia_a=0.3, rmia_population=m)
    assert metrics["rmia_population"] == m and metrics["score_resolution"] == 1 / m
    online = read_json(tmp_path / "m8" / "rmia_online" / "metrics.json")
    assert online["rmia_population"] == m and online["score_resolution"] == 1 / m
    assert "rmia_a" not in online  # the online attack does not use a
    steps = scores["score"].to_numpy() * m
    assert np.allclose(steps, np.round(steps))  # scores move in steps of 1/m
    everything, _ = _rmia(tmp_path, victim, refs, "all", rmia_a=0.3, rmia_population="all")
    assert everything["rmia_population"] == N_POP
    with pytest.raises(DataError, match=f"rmia_population is {N_POP + 1}"):
        _rmia(tmp_path, victim, refs, "too_many", rmia_population=N_POP + 1)
