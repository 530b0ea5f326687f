"""The DAG from a config: models trained once, single-figure reruns, the paper's plan."""

import pytest
from conftest import REPO, run_snakemake
from conftest import planned_jobs as _planned
from segmia.config import load_config_file
from segmia.plan import all_evaluations, all_models, study_figures


def test_every_model_is_trained_once_and_shared_between_studies():
    config = load_config_file(REPO / "config" / "demo.yaml")
    models = all_models(config)
    assert len(models) == len(set(models))
    victims = {study: {ev.victim for ev in evs} for study, evs in all_evaluations(config).items()}
    # the undefended victim of the defences study is the one of the architecture grid
    assert victims["defences_ct"] & victims["architectures_ct"]
    # the DP victim is shared by the defences, the epsilon sweep and the attack comparison
    assert victims["defences_ct"] & victims["dp_sweep_ct"] & victims["attack_comparison_ct"]


@pytest.mark.parametrize(
    ("target", "expected_trains", "forbidden"),
    [
        ("figures/poisoning_ct/poisoning.png", 6, {"reference_attacks", "table"}),
        ("figures/architectures_scenes/heatmap.png", 4, {"backdoor", "reference_attacks", "table"}),
    ],
)
def test_asking_for_one_figure_plans_only_what_it_needs(
    tmp_path, target, expected_trains, forbidden
):
    root = tmp_path / "results"
    proc = run_snakemake(
        "-n",
        "--cores",
        "1",
        str(root / target),
        "--config",
        f"results={root}",
        workdir=tmp_path,
        configfile=REPO / "config" / "demo.yaml",
    )
    planned = _planned(proc)
    assert planned["figure"] == 1
    assert planned["train"] == expected_trains, planned
    assert not set(planned) & forbidden, planned


def test_paper_config_plans_every_study():
    config = load_config_file(REPO / "config" / "config.yaml")
    evaluations = all_evaluations(config)
    assert set(config["studies"]) >= {
        "table1_3_liver",
        "table4_liver_defences",
        "table5_kvasir_defences",
        "cityscapes_training_size",
        "poisoning_liver",
    }
    assert all(evaluations[s] for s in config["studies"])
    assert all(study_figures(config, s) for s in config["studies"])
    assert config["seeds"] == [0, 1, 2]
    archs = config["architectures"]
    assert {a["encoder"] for a in archs.values()} == {"resnet34", "mobilenet_v2", "vgg11"}
    assert {a["encoder_weights"] for a in archs.values()} == {"imagenet"}
