"""Reference models of LiRA/RMIA: trained like the victim (reference_variant), IN/OUT at the
membership unit, and RMIA's offline a and population size as configured and recorded."""

import numpy as np
import pandas as pd
import pytest
from conftest import CONFIGS, load_yaml, planned_jobs, run_snakemake, write_config
from segmia import plan
from segmia.config import load_config
from segmia.data.names import reference_unit
from segmia.data.split import make_split, reference_training_rows, reference_universe
from segmia.errors import ConfigError
from segmia.runtime import stable_seed

EPSILON = 4.0
K = 4


def _comparison(tmp_path, **study) -> dict:
    """The tiny config with a DP defence and an attack_comparison study over none, dp, argmax."""
    config = load_yaml(CONFIGS / "tiny.yaml")
    config["results"] = str(tmp_path / "results")
    config["resources"] = str(tmp_path / "resources")
    config["defences"] = {
        "dp": {"type": "dp", "epsilon": EPSILON, "max_grad_norm": 1.0, "accountant": "rdp"},
        "argmax": {"type": "argmax"},
        "kd": {"type": "distillation", "reference_size": 4},
    }
    config["studies"] = {
        "cmp": {
            "type": "attack_comparison",
            "dataset": "ct",
            "architecture": "tiny",
            "defences": ["none", "dp", "argmax"],
            "attacks": ["lira_online", "rmia_offline"],
            "reference_models": K,
            "train_size": 12,
            **study,
        }
    }
    config["datasets"]["ct"]["split"].update(mia_size=4, val_size=4)
    return load_config(config)


def _reference_sets(config) -> dict[str, str]:
    """{victim variant/release: the reference set its reference attacks use}."""
    return {
        f"{ev.victim.variant}/{ev.release}": ev.shadow.variant
        for ev in plan.study_evaluations(config, "cmp")
        if ev.shadow.role == "reference"
    }


def test_a_dp_victim_is_attacked_with_dp_references_of_the_same_epsilon(tmp_path):
    config = _comparison(tmp_path)
    assert config["studies"]["cmp"]["reference_variant"] == "victim"  # the default
    # the undefended victim keeps the undefended set at its old path; argmax is a release
    assert _reference_sets(config) == {
        "none/none": "refs4",
        "dp/none": "refs4.dp",
        "none/argmax": "refs4",
    }
    dp = next(ev for ev in plan.study_evaluations(config, "cmp") if ev.victim.variant == "dp")
    refs = plan.references(dp.shadow)
    assert [m.role for m in refs] == [f"ref{k}" for k in range(K)]
    assert {m.variant for m in refs} == {"dp"}
    victim_spec = plan.model_spec(config, dp.victim)
    for ref in refs:
        spec = plan.model_spec(config, ref)
        assert spec["variant"] == victim_spec["variant"]  # the victim's recipe
        assert spec["variant"]["type"] == "dp" and spec["variant"]["epsilon"] == EPSILON
        assert spec["pool"] == "reference" and spec["reference_unit"] == "group"
    models = plan.all_models(config)
    assert sum(m.role.startswith("ref") and m.variant == "dp" for m in models) == K
    assert sum(m.role.startswith("ref") and m.variant == "none" for m in models) == K
    assert plan.model_studies(config)[refs[0]] == ["cmp"]


def test_reference_variant_none_gives_the_undefended_references_of_before(tmp_path):
    config = _comparison(tmp_path, reference_variant="none")
    assert set(_reference_sets(config).values()) == {"refs4"}
    refs = [m for m in plan.all_models(config) if m.role.startswith("ref")]
    assert len(refs) == K and {m.variant for m in refs} == {"none"}
    assert all(plan.model_spec(config, m)["variant"] == {"type": "none"} for m in refs)


def test_reference_set_names_carry_k_and_the_variant():
    for k, variant in [(8, "none"), (8, "dp"), (16, "dp.eps1"), (2, "none.byte")]:
        name = plan.reference_set(k, variant)
        assert plan.reference_set_parts(name) == (k, variant)
    assert plan.reference_set(8, "none") == "refs8"
    with pytest.raises(ValueError, match="not a reference set"):
        plan.reference_set_parts("shadow8")


@pytest.mark.parametrize(
    ("study", "message"),
    [
        ({"defences": ["none", "kd"]}, "defence 'kd' cannot train a reference model"),
        ({"rmia_population": 9}, "'studies.cmp.rmia_population' is 9"),
        ({"rmia_a": 1.5}, "'studies.cmp.rmia_a' is 1.5, which is not allowed"),
        ({"rmia_population": 0}, "'studies.cmp.rmia_population' is 0, which is not allowed"),
    ],
)
def test_reference_settings_that_cannot_run_are_refused(tmp_path, study, message):
    with pytest.raises(ConfigError, match=message) as err:
        _comparison(tmp_path, **study)
    assert "\n" not in str(err.value)


def test_distilled_victims_may_keep_undefended_references(tmp_path):
    config = _comparison(tmp_path, defences=["none", "kd"], reference_variant="none")
    assert set(_reference_sets(config).values()) == {"refs4"}


# --- IN/OUT at the membership unit --------------------------------------------------------------


def _uneven_split(groups: str = "whole"):
    """A split of 60 patients of 1 to 7 slices each."""
    sizes_of = np.random.default_rng(1).integers(1, 8, 60)
    index = pd.DataFrame(
        {
            "sample_id": [f"p{g}_{i}" for g, n in enumerate(sizes_of) for i in range(n)],
            "group": [f"p{g}" for g, n in enumerate(sizes_of) for _ in range(n)],
        }
    )
    sizes = dict(
        victim_pool=100, shadow_pool=100, train_size=30, val_size=10, mia_size=10, groups=groups
    )
    return make_split(index, sizes, seed=0), sizes


def test_reference_models_draw_whole_groups_each_in_about_half_of_them():
    split, sizes = _uneven_split()
    assert reference_unit(sizes) == "group"
    n, k = 30, 200
    universe = reference_universe(split, n, sizes)
    candidates = universe.loc[universe["part"] != "population", "row"].to_numpy()
    groups = split.loc[candidates, "group"]
    largest = groups.value_counts().max()
    assert largest > 1 and len(candidates) == 2 * n
    inside = np.zeros((k, len(candidates)), bool)
    for i in range(k):
        rows = reference_training_rows(split, n, sizes, 0, i, "group")
        assert abs(len(rows) - n) <= largest / 2  # N, give or take half a group
        inside[i] = np.isin(candidates, rows)
    per_group = pd.DataFrame(inside.T).groupby(groups.to_numpy())
    # every group wholly IN or wholly OUT of every model
    assert (per_group.nunique() == 1).all().all()
    share = per_group.first().mean(axis=1)  # the share of models each group is IN
    assert share.between(0.35, 0.65).all(), share.describe()
    assert abs(share.mean() - 0.5) < 0.03
    # model k does not depend on how many models a study asks for (nor on anything else)
    again = reference_training_rows(split, n, sizes, 0, 7, "group")
    assert np.isin(candidates, again).tolist() == inside[7].tolist()


def test_one_sample_per_unit_is_the_per_image_draw_of_before():
    split, sizes = _uneven_split("none")
    assert reference_unit(sizes) == "sample"
    universe = reference_universe(split, 30, sizes)
    candidates = universe.loc[universe["part"] != "population", "row"].to_numpy()
    for i in range(5):
        rng = np.random.default_rng(stable_seed("reference", 0, i))
        before = np.sort(rng.permutation(candidates)[: len(candidates) // 2])
        assert reference_training_rows(split, 30, sizes, 0, i, "sample").tolist() == before.tolist()


def test_a_dp_reference_model_trains_with_the_victims_recipe_on_whole_groups(tmp_path):
    """The training job of a DP reference model: DP-SGD at the victim's epsilon, on a training set
    of whole patients."""
    import torch
    from conftest import synthetic_ct_job
    from segmia.io import read_csv, read_json
    from segmia.models.job import train_job

    config = _comparison(tmp_path)
    ref = plan.references(
        plan.Model("ct", "reference", "tiny", plan.reference_set(K, "dp"), 12, 0)
    )[1]
    spec = plan.model_spec(config, ref)
    spec["training"] = {**spec["training"], "epochs": 1}
    data, split_path = synthetic_ct_job(tmp_path, spec["split"], groups=30)
    metrics = train_job(
        data_dir=data,
        split_path=split_path,
        spec=spec,
        out_dir=tmp_path / "ref1",
        device=torch.device("cpu"),
    )
    assert metrics["role"] == "ref1" and metrics["variant"] == "dp"
    assert metrics["variant_spec"]["epsilon"] == EPSILON
    assert 0 < metrics["epsilon"] <= EPSILON
    members = read_csv(tmp_path / "ref1" / "members.csv")
    split = pd.read_csv(split_path)
    assert read_json(tmp_path / "ref1" / "spec.json")["reference_unit"] == "group"
    universe = reference_universe(split, 12, spec["split"])
    candidates = split.loc[universe.loc[universe["part"] != "population", "row"]]
    taken = candidates["group"].isin(split.loc[members["row"], "group"])
    assert candidates.index[taken].isin(members["row"]).all()  # whole patients


def test_the_models_summary_counts_reference_models_per_study_and_variant(tmp_path):
    from segmia.io import write_json
    from segmia.report.summary import collect_models

    config = _comparison(tmp_path, defences=["none", "dp"])
    found = plan.model_studies(config)
    paths = []
    for i, model in enumerate(found):
        metrics = {**model.__dict__, "train_size": model.size, "variant": model.variant}
        metrics.update(val_dice=0.5, val_iou=0.4, train_loss=0.1, val_loss=0.2, train_seconds=1.0)
        paths.append(tmp_path / f"m{i}.json")
        write_json(paths[-1], metrics)
    table = collect_models(paths, [",".join(v) for v in found.values()])
    refs = table[table["role"].str.startswith("ref") & (table["studies"] == "cmp")]
    assert refs.groupby("variant").size().to_dict() == {"dp": K, "none": K}


@pytest.mark.slow
def test_the_workflow_plans_dp_reference_models_for_a_dp_victim(tmp_path):
    config = _comparison(tmp_path)
    config["studies"]["cmp"]["defences"] = ["none", "dp"]
    path = write_config(tmp_path, config)
    proc = run_snakemake("-n", "--cores", "1", workdir=tmp_path, configfile=path)
    planned = planned_jobs(proc)
    # victims none and dp, K undefended and K DP reference models
    assert planned["train"] == 2 + 2 * K, planned
    assert planned["reference_attacks"] == 2, planned
    assert "/vs_tiny/refs4.dp/" in proc.stdout + proc.stderr
