"""Coarse jobs: a training job queries its model on its MIA set, one evaluate job runs every attack
of a group, and the DAG plans one job per model and per evaluation group."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_SIZES, run_snakemake, synthetic_ct_job, tiny_spec
from conftest import planned_jobs as _planned
from segmia import plan
from segmia.config import load_config_file
from segmia.errors import SegmiaError
from segmia.io import read_json

CPU = torch.device("cpu")


def _train(tmp_path, out):
    from segmia.models.job import train_job

    return train_job(
        data_dir=tmp_path / "data",
        split_path=tmp_path / "split.csv",
        spec=tiny_spec(epochs=2),
        out_dir=out,
        device=CPU,
    )


def test_the_training_job_queries_its_mia_set_as_a_separate_query_would(tmp_path):
    from segmia.attacks.outputs import query_job

    data, split = synthetic_ct_job(tmp_path, TINY_SIZES)
    model = tmp_path / "model"
    _train(tmp_path, model)
    own = model / "queries" / "mia"
    query_job(
        model_dir=model,
        data_dir=data,
        split_path=split,
        pool="victim",
        train_size=12,
        sizes=TINY_SIZES,
        out_dir=tmp_path / "separate",
        device=CPU,
    )
    assert np.array_equal(
        np.load(own / "logits.npy"), np.load(tmp_path / "separate" / "logits.npy")
    )
    samples = pd.read_csv(own / "samples.csv")
    pd.testing.assert_frame_equal(samples, pd.read_csv(tmp_path / "separate" / "samples.csv"))
    # the victim's balanced MIA set: its first mia_size members and as many non-members
    assert samples["member"].tolist() == [1] * 4 + [0] * 4
    assert not (model / ".checkpoint").exists()


def test_a_failed_query_keeps_the_trained_epochs(tmp_path, monkeypatch):
    """The checkpoint goes only once the query is written: a rerun after a failed query resumes
    after the last epoch instead of training again."""
    from segmia.attacks import outputs
    from segmia.models import train

    synthetic_ct_job(tmp_path, TINY_SIZES)
    model = tmp_path / "model"
    real_query = outputs.query_job

    def broken(**kwargs):
        raise OSError("disk full while writing the query")

    monkeypatch.setattr(outputs, "query_job", broken)
    with pytest.raises(OSError):
        _train(tmp_path, model)
    assert (model / ".checkpoint" / "last.pt").exists()
    epochs = []
    real_epoch = train._epoch
    monkeypatch.setattr(train, "_epoch", lambda *a, **k: epochs.append(1) or real_epoch(*a, **k))
    monkeypatch.setattr(outputs, "query_job", real_query)
    metrics = _train(tmp_path, model)
    assert epochs == [] and metrics["epochs"] == 2
    assert (model / "queries" / "mia" / "logits.npy").exists()
    assert not (model / ".checkpoint").exists()


def test_a_spec_without_split_sizes_is_refused_before_training(tmp_path):
    from segmia.models.job import train_job

    synthetic_ct_job(tmp_path, TINY_SIZES)
    spec = tiny_spec()
    del spec["split"]
    with pytest.raises(SegmiaError, match="has no 'split'"):
        train_job(
            data_dir=tmp_path / "data",
            split_path=tmp_path / "split.csv",
            spec=spec,
            out_dir=tmp_path / "model",
            device=CPU,
        )
    assert not (tmp_path / "model" / ".checkpoint").exists()


def test_evaluate_runs_every_attack_of_its_group_as_the_single_attack_jobs(tmp_path):
    from segmia.attacks.job import evaluate_job, threshold_attack_job
    from test_attacks import _spec, make_query

    data = tmp_path / "data"
    victim, shadow = tmp_path / "victim" / "queries" / "mia", tmp_path / "shadow"
    make_query(victim, data, 4.0, 0.3, seed=3)
    make_query(shadow / "queries" / "mia", data, 4.0, 0.3, seed=3)  # (one dataset: same masks)
    specs = {"global_loss": _spec("global_loss"), "agg_mean": _spec("agg_mean")}
    # a group of threshold attacks alone needs no device
    grouped = evaluate_job(
        specs=specs,
        victim_query=victim,
        shadow_model=shadow,
        shadow_query=shadow / "queries" / "mia",
        data_dir=data,
        out_dir=tmp_path / "group",
        device=None,
    )
    assert set(grouped) == set(specs)
    for attack, spec in specs.items():
        alone = threshold_attack_job(
            kind=attack,
            shadow_model=shadow,
            victim_query=victim,
            data_dir=data,
            spec=spec,
            out_dir=tmp_path / "alone" / attack,
            shadow_query=shadow / "queries" / "mia",
        )
        assert grouped[attack] == alone and alone["auc"] > 0.95
        assert read_json(tmp_path / "group" / attack / "metrics.json") == read_json(
            tmp_path / "alone" / attack / "metrics.json"
        )
    with pytest.raises(SegmiaError, match="--attack-models type2=<dir>"):
        evaluate_job(
            specs={"type2": _spec("type2")},
            victim_query=victim,
            shadow_model=shadow,
            shadow_query=shadow / "queries" / "mia",
            data_dir=data,
            out_dir=tmp_path / "learned",
            device=CPU,
        )


def test_every_evaluation_belongs_to_one_group_and_each_group_is_one_job(tmp_path):
    config = load_config_file(REPO / "config" / "demo.yaml")
    groups = plan.evaluation_groups(config)
    evaluations = {ev for evs in plan.all_evaluations(config).values() for ev in evs}
    grouped = [ev for evs in groups.values() for ev in evs]
    assert len(grouped) == len(set(grouped)) and set(grouped) == evaluations
    for group, evs in groups.items():
        assert {ev.group() for ev in evs} == {group}
        assert len({ev.attack for ev in evs}) == len(evs)  # one directory per attack
    root = tmp_path / "results"
    proc = run_snakemake(
        "-n",
        "--cores",
        "1",
        "--config",
        f"results={root}",
        workdir=tmp_path,
        configfile=REPO / "config" / "demo.yaml",
    )
    planned = _planned(proc)
    reference = {g for g, evs in groups.items() if evs[0].shadow.role == "reference"}
    assert planned["evaluate"] == len(groups) - len(reference)
    assert planned["reference_attacks"] == len(reference)
    assert planned["train"] == len(plan.all_models(config))
    # no model is queried on its own MIA set by a job of its own: only victims on the reference
    # universe (LiRA/RMIA) and the poisoning study's triggered queries
    assert planned["query"] == len({evs[0].victim for g, evs in groups.items() if g in reference})
    assert "eval_attack" not in planned and "threshold_attack" not in planned
