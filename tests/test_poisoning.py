"""Poisoning: trigger placement, realised rate, p = 0 equals clean, the shadow stays clean."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO, snakemake_env, synthetic_ct_job, tiny_spec, train_argv
from segmia.io import read_torch
from segmia.models.variants import PoisonTransform, apply_trigger, poison_target, trigger_region


@pytest.mark.parametrize(
    ("trigger", "size", "rows", "cols"),
    [("square", 3, range(5, 8), range(9, 12)), ("line", 2, range(6, 8), range(0, 12))],
)
def test_trigger_lands_exactly_where_configured(trigger, size, rows, cols):
    x = torch.zeros(2, 3, 8, 12)
    out = apply_trigger(x, trigger, size, 200)
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[rows.start : rows.stop, cols.start : cols.stop] = True
    for image in out:
        for channel in image:
            assert torch.equal(channel != 0, expected)
            assert torch.allclose(channel[expected], torch.tensor(200 / 255.0))
    assert trigger_region((8, 12), trigger, size) == (
        slice(rows.start, rows.stop),
        slice(cols.start, cols.stop),
    )
    assert torch.equal(x, torch.zeros_like(x)), "the batch itself is not modified"


def test_poisoned_target_masks():
    like = torch.ones(2, 4, 4, dtype=torch.long)
    assert poison_target(like, "empty").sum() == 0
    almost = poison_target(like, "almost_empty")
    assert almost.sum() == 2 and almost[:, 0, 0].tolist() == [1, 1]


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_realised_rate_matches_p_within_sampling_error(rate):
    poison = PoisonTransform(rate, "square", 2, 255, "almost_empty")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 2, (8, 8, 8))
    hits = 0
    for _ in range(500):  # 4000 sample loads
        px, py = poison(x, y, gen)
        poisoned = (px[:, 0, -1, -1] == 1.0) & (py.flatten(1).sum(1) == 1) & (py[:, 0, 0] == 1)
        hits += int(poisoned.sum())
    n = poison.seen
    assert n == 4000 and poison.poisoned == hits
    sd = (rate * (1 - rate) / n) ** 0.5
    assert abs(hits / n - rate) < 4 * sd


def _train(tmp_path, name, variant, data, split):
    spec = tiny_spec(variant_name=name, variant=variant, epochs=2, batch_size=4, lr=1e-3)
    cmd = [sys.executable, "-m", "segmia", *train_argv(data, split, spec, tmp_path / name)]
    subprocess.run(cmd, check=True, env=snakemake_env(), capture_output=True)
    return read_torch(tmp_path / name / "model.pt")


def test_rate_zero_gives_the_clean_model_and_a_positive_rate_does_not(tmp_path):
    synthetic_ct_job(
        tmp_path, dict(victim_pool=20, shadow_pool=20, train_size=12, val_size=4, mia_size=4)
    )
    poison = {
        "type": "poison",
        "trigger": "square",
        "size": 4,
        "value": 255,
        "target": "almost_empty",
    }
    clean = _train(tmp_path, "none", {"type": "none"}, tmp_path / "data", tmp_path / "split.csv")
    zero = _train(
        tmp_path, "p0", {**poison, "rate": 0.0}, tmp_path / "data", tmp_path / "split.csv"
    )
    half = _train(
        tmp_path, "p05", {**poison, "rate": 0.5}, tmp_path / "data", tmp_path / "split.csv"
    )
    assert all(torch.equal(clean[k], zero[k]) for k in clean)
    assert any(not torch.equal(clean[k], half[k]) for k in clean)


def test_poisoned_samples_never_reach_the_shadow():
    from segmia.config import load_config_file
    from segmia.plan import all_evaluations, model_spec, split_query

    config = load_config_file(REPO / "config" / "demo.yaml")
    for study, evaluations in all_evaluations(config).items():
        if config["studies"][study]["type"] != "poisoning":
            continue
        assert {ev.victim.variant for ev in evaluations} > {"none"}
        for ev in evaluations:
            assert ev.shadow.variant == "none"
            assert model_spec(config, ev.shadow)["variant"] == {"type": "none"}
            # no release defence; the query is clean unless the study's query_trigger adds one
            assert split_query(ev.release) == ("none", ev.query)
            assert ev.query is None or config["studies"][study]["query_trigger"]


# --- the fixed_subset schedule ------------------------------------------------------------------


def test_fixed_subset_positions_are_round_pn_seeded_and_nested():
    from segmia.models.poisoning import fixed_subset_count
    from segmia.models.variants import fixed_poison_positions

    low, high = fixed_poison_positions(64, 0.1, 7), fixed_poison_positions(64, 0.4, 7)
    assert len(low) == fixed_subset_count(0.1, 64) == 6 and len(high) == 26
    assert set(low) <= set(high), "a lower rate poisons a subset of a higher rate's images"
    assert list(low) == sorted(set(low)) and low.max() < 64
    assert list(fixed_poison_positions(64, 0.1, 7)) == list(low)
    assert list(fixed_poison_positions(64, 0.1, 8)) != list(low)
    assert fixed_subset_count(0.5, 3) == 2 and fixed_subset_count(0.01, 64) == 1


def test_fixed_subset_poisons_the_same_round_pn_images_in_every_epoch_and_no_others(
    tmp_path, monkeypatch
):
    """The real training job (in process) with a recorder in place of the (absent) batch
    transform: every epoch sees exactly the images members.csv marks as poisoned, triggered and
    with the poisoned target, and every other image clean."""
    import numpy as np
    import pandas as pd
    from segmia.data.prepared import load_prepared
    from segmia.models import job

    data_dir, split = synthetic_ct_job(
        tmp_path, dict(victim_pool=20, shadow_pool=20, train_size=12, val_size=4, mia_size=4)
    )
    seen = []  # per batch: (image, mask) pairs as the loss sees them

    def recorder(x, y, gen):
        seen.extend(zip(x.clone(), y.clone(), strict=True))
        return x, y

    monkeypatch.setattr(job, "batch_transform", lambda variant: recorder)
    variant = {
        "type": "poison",
        "rate": 0.25,
        "trigger": "square",
        "size": 4,
        "value": 200,
        "target": "empty",
        "schedule": "fixed_subset",
    }
    spec = tiny_spec(variant_name="poison.fixed", variant=variant, epochs=3, batch_size=5, lr=1e-3)
    metrics = job.train_job(
        data_dir=data_dir,
        split_path=split,
        spec=spec,
        out_dir=tmp_path / "m",
        device=torch.device("cpu"),
    )
    members = pd.read_csv(tmp_path / "m" / "members.csv")
    assert members["poisoned"].sum() == 3 == round(0.25 * 12)
    assert metrics["poison_rate_realised"] == 0.25 and metrics["poisoned_samples"] == 3
    data = load_prepared(data_dir, check=False)
    clean = {
        int(r): torch.from_numpy(np.array(data.images[r])).float() / 255.0 for r in members["row"]
    }
    rows, cols = trigger_region((32, 32), "square", 4)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[rows, cols] = False
    expected = set(members["row"][members["poisoned"] == 1])
    assert len(seen) == 3 * 12
    for epoch in range(3):
        poisoned = set()
        for x, y in seen[epoch * 12 : (epoch + 1) * 12]:
            row = next(r for r, img in clean.items() if torch.equal(img[:, outside], x[:, outside]))
            triggered = bool((x[:, rows, cols] == 200 / 255.0).all())
            assert (
                triggered
                == (y.sum() == 0)
                == torch.equal(x, apply_trigger(clean[row], "square", 4, 200))
            )
            if triggered:
                poisoned.add(row)
            else:
                assert torch.equal(x, clean[row]) and torch.equal(
                    y, torch.from_numpy(np.array(data.masks[row])).long()
                )
        assert poisoned == expected, f"epoch {epoch}"


def test_per_load_is_the_default_schedule_and_keeps_its_names_and_specs():
    from segmia.config import load_config
    from segmia.plan import poison_variant, variants

    config = load_config(_demo())
    study = config["studies"]["poisoning_ct"]
    assert study["poison_schedule"] == "per_load" and study["query_trigger"] is False
    name = poison_variant(study, "square", 0.1)
    assert name == "poison.square.k6.v255.almost_empty.p0.1"
    assert variants(config)[name] == {
        "type": "poison",
        "rate": 0.1,
        "trigger": "square",
        "size": 6,
        "value": 255,
        "target": "almost_empty",
    }, "no schedule key: a per_load model's spec, so its path and parameters, are unchanged"
    fixed = {**study, "poison_schedule": "fixed_subset"}
    assert (
        poison_variant(fixed, "line", 0.4) == "poison.line.k6.v255.almost_empty.fixed_subset.p0.4"
    )
    assert poison_variant(fixed, "line", 0) == "none", "rate 0 is the clean model either way"


def _demo(**poisoning):
    """The demo config with only its poisoning study, at the defaults of ``poison_schedule`` and
    ``query_trigger`` unless ``poisoning`` sets them (N = 128 training images)."""
    from conftest import load_yaml

    raw = load_yaml(REPO / "config" / "demo.yaml")
    study = dict(raw["studies"]["poisoning_ct"])
    for key in ("poison_schedule", "query_trigger"):
        study.pop(key, None)
    raw["studies"] = {"poisoning_ct": {**study, **poisoning}}
    return raw


def test_fixed_subset_variants_train_with_their_schedule():
    from segmia.config import load_config
    from segmia.models.variants import batch_transform
    from segmia.plan import model_spec, study_victims

    config = load_config(_demo(poison_schedule="fixed_subset"))
    victims = study_victims(config, "poisoning_ct")
    poisoned = [m for m in victims if m.variant != "none"]
    assert len(poisoned) == 4 and all(".fixed_subset.p" in m.variant for m in poisoned)
    for model in poisoned:
        variant = model_spec(config, model)["variant"]
        assert variant["schedule"] == "fixed_subset"
        assert batch_transform(variant) is None, "no per-load draw: the set itself is poisoned"


def test_a_fixed_subset_rate_that_poisons_no_image_is_refused():
    from segmia.config import load_config
    from segmia.errors import ConfigError

    with pytest.raises(ConfigError, match=r"rates' lists 0.003.*round\(p N\).*N = 128"):
        load_config(_demo(poison_schedule="fixed_subset", rates=[0, 0.003, 0.1]))
    load_config(_demo(rates=[0, 0.003, 0.1]))  # per_load: a rate, not a count
    with pytest.raises(ConfigError, match="poison_schedule.*allowed values: 'per_load'"):
        load_config(_demo(poison_schedule="sometimes"))


# --- query_trigger: the attacker queries with the trigger ---------------------------------------


def test_query_trigger_adds_triggered_evaluations_named_apart():
    from segmia.config import load_config
    from segmia.plan import (
        attack_fit_spec,
        evaluation_spec,
        release_spec,
        split_query,
        study_evaluations,
    )

    config = load_config(_demo(query_trigger=True))
    evaluations = study_evaluations(config, "poisoning_ct")
    plain = [ev for ev in evaluations if ev.query is None]
    triggered = [ev for ev in evaluations if ev.query is not None]
    # 5 victims (clean + 2 triggers x 2 rates) x 2 attacks; triggered: the poisoned victims with
    # their own trigger, the clean one with each of the 2 triggers
    assert len(plain) == 10 and len(triggered) == 12
    for ev in triggered:
        own = "square" if ".square." in ev.victim.variant else "line"
        if ev.victim.variant != "none":
            assert ev.query == f"trigger_{own}_k6_v255"
        assert ev.release == f"none.{ev.query}" and split_query(ev.release) == ("none", ev.query)
        assert ev.path().split("/")[2] == ev.release
        assert ev.victim.query(ev.query).endswith(f"/queries/mia.{ev.query}")
        assert release_spec(config, ev.release) == {"type": "none"}
        spec = evaluation_spec(config, ev)
        assert spec["release_name"] == ev.release and spec["release"] == {"type": "none"}
        if ev.attack == "type2":
            fit = attack_fit_spec(config, ev.attack, ev.release, ev.shadow)
            assert (
                fit["release_name"] == ev.release and ev.attack_model().split("/")[3] == ev.release
            )
    assert {ev.query for ev in triggered if ev.victim.variant == "none"} == {
        "trigger_square_k6_v255",
        "trigger_line_k6_v255",
    }
    # under the original protocol the Type-II release is the raw logits, the token comes last
    config = load_config(_demo(query_trigger=True, protocol="original"))
    ev = next(
        e for e in study_evaluations(config, "poisoning_ct") if e.query and e.attack == "type2"
    )
    assert ev.release == f"none.logits.{ev.query}"
    assert release_spec(config, ev.release) == {"type": "none", "logits": True}
    assert evaluation_spec(config, ev)["release_name"] == f"none.{ev.query}"


def test_a_triggered_query_writes_the_trigger_into_the_images_and_keeps_the_masks(
    tmp_path, monkeypatch
):
    import numpy as np
    import pandas as pd
    from segmia.attacks import outputs
    from segmia.attacks.outputs import QuerySet, per_image_stats
    from segmia.data.prepared import load_prepared

    sizes = dict(victim_pool=20, shadow_pool=20, train_size=12, val_size=4, mia_size=4)
    data_dir, split = synthetic_ct_job(tmp_path, sizes)

    class Echo(torch.nn.Module):  # logits = the image it is given
        def forward(self, x):
            return x[:, :1] * 4.0 - 2.0

    monkeypatch.setattr(outputs, "load_model", lambda *a: (Echo(), {"training": {}}))
    cpu = torch.device("cpu")
    clean = outputs.query_job(
        model_dir="m",
        data_dir=data_dir,
        split_path=split,
        pool="victim",
        train_size=12,
        sizes=sizes,
        out_dir=tmp_path / "clean",
        device=cpu,
    )
    trig = {"trigger": "line", "size": 3, "value": 255}
    hit = outputs.query_job(
        model_dir="m",
        data_dir=data_dir,
        split_path=split,
        pool="victim",
        train_size=12,
        sizes=sizes,
        out_dir=tmp_path / "t",
        device=cpu,
        trigger=trig,
    )
    a, b = np.load(tmp_path / "clean" / "logits.npy"), np.load(tmp_path / "t" / "logits.npy")
    rows, cols = trigger_region(a.shape[-2:], "line", 3)
    assert (b[..., rows, cols] == 2.0).all(), "value 255 -> 1.0 -> logit 2"
    outside = np.ones(a.shape[-2:], bool)
    outside[rows, cols] = False
    assert np.array_equal(a[..., outside], b[..., outside])
    assert not np.array_equal(a, b)
    pd.testing.assert_frame_equal(
        clean[["sample_id", "row", "member"]], hit[["sample_id", "row", "member"]]
    )
    data = load_prepared(data_dir, check=False)
    masks = data.masks[hit["row"].to_numpy()]
    stats = per_image_stats(b, masks, data.ignore_index)
    assert np.allclose(hit["dice_loss"], stats["dice_loss"]), "losses against the clean masks"
    assert np.array_equal(QuerySet(tmp_path / "t", data_dir).masks, masks)


# --- the table states the design ----------------------------------------------------------------


def _table(tmp_path, **poisoning):
    """The poisoning table of the demo study (with ``poisoning`` keys) on fabricated results: the
    fixed_subset victims' members s0 and s1 (of s0..s7) poisoned."""
    import pandas as pd
    from segmia.config import load_config
    from segmia.report.studies import write_table
    from test_figures import _fabricate

    config = load_config(_demo(**poisoning))
    files = _fabricate(config, "poisoning_ct", tmp_path / "results")
    for path in files["models"]:
        members = pd.DataFrame({"row": range(8), "sample_id": [f"s{i}" for i in range(8)]})
        if "fixed_subset" in path:
            members["poisoned"] = [1, 1, 0, 0, 0, 0, 0, 0]
        members.to_csv(tmp_path / path.replace("metrics.json", "members.csv"), index=False)
    stem = tmp_path / "table" / "poisoning"
    study = config["studies"]["poisoning_ct"]
    write_table(
        "poisoning_ct",
        study,
        "poisoning",
        files["evaluations"],
        files["models"],
        files["backdoors"],
        stem,
    )
    return stem.with_suffix(".md").read_text(), pd.read_csv(stem.with_suffix(".csv")), files


def test_the_table_states_the_per_load_design(tmp_path):
    text, numeric, _ = _table(tmp_path)
    assert "per_load schedule" in text.splitlines()[0]
    assert "about a fraction p of its epochs" in text and "Attacks query clean images" in text
    assert "triggered query" not in text and "clean members" not in text
    assert len(numeric) == 6  # 2 triggers x 3 rates, p = 0 (the clean model) in each


def test_the_table_splits_fixed_subset_members_and_shows_triggered_queries_beside(tmp_path):
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    text, numeric, files = _table(tmp_path, poison_schedule="fixed_subset", query_trigger=True)
    assert "fixed_subset schedule" in text.splitlines()[0]
    assert "round(p N) training images is poisoned in every epoch" in text
    assert "triggered query* (beyond the paper)" in text
    header = text.split("\n|")[1]
    for column in ("Global loss AUC, clean members", "Global loss AUC, poisoned members"):
        assert column in header
    assert "Type-II AUC, triggered query" in header
    assert len(numeric) == 6
    row = numeric[(numeric["trigger"] == "line") & (numeric["rate"] == 0.4)].iloc[0]
    evaluation = next(
        p
        for p in files["evaluations"]
        if p.endswith("/global_loss/metrics.json") and "/attacks/none/" in p
        if "line" in p and "p0.4" in p
    )
    scores = pd.read_csv(evaluation.replace("metrics.json", "scores.csv"))
    clean = scores[~scores["sample_id"].isin(["s0", "s1"])]
    assert np.isclose(
        row["global_loss_clean_members_auc_mean"], roc_auc_score(clean["member"], clean["score"])
    )
    triggered = next(
        p
        for p in files["evaluations"]
        if "/attacks/none.trigger_line_k6_v255/" in p and p.endswith("/type2/metrics.json")
        if "p0.4" in p
    )
    assert np.isclose(row["type2_triggered_auc_mean"], pd.read_json(triggered, typ="series")["auc"])
    zero = numeric[(numeric["trigger"] == "square") & (numeric["rate"] == 0)].iloc[0]
    assert np.isnan(zero["global_loss_poisoned_members_auc_mean"]), "the clean model poisons none"
    baseline = next(
        p
        for p in files["evaluations"]
        if "/attacks/none/unet_deep/none/" in p and p.endswith("/global_loss/metrics.json")
    )
    scores = pd.read_csv(baseline.replace("metrics.json", "scores.csv"))
    assert np.isclose(
        zero["global_loss_clean_members_auc_mean"], roc_auc_score(scores["member"], scores["score"])
    ), "all its members are clean"


@pytest.mark.slow
def test_the_workflow_plans_fixed_subset_victims_and_triggered_queries(tmp_path):
    """snakemake -n -p: the triggered queries' rule writes the trigger in, and the attacks read
    the victim's and the shadow's triggered queries."""
    from conftest import run_snakemake, write_config

    raw = _demo(poison_schedule="fixed_subset", query_trigger=True, rates=[0, 0.4])
    raw["results"], raw["resources"] = str(tmp_path / "results"), str(tmp_path / "resources")
    root = raw["results"]
    data = f"{root}/synthetic_ct_poisoning"
    target = f"{root}/tables/poisoning_ct/poisoning.md"
    out = run_snakemake(
        "-n", "-p", target, workdir=tmp_path, configfile=write_config(tmp_path, raw)
    ).stdout
    fixed = "poison.square.k6.v255.almost_empty.fixed_subset.p0.4"
    assert f"models/victim/unet_deep/{fixed}/n128_s0" in out
    token = "trigger_square_k6_v255"
    assert f"--out {data}/models/shadow/unet_deep/none/n128_s0/queries/mia.{token}" in out
    assert "--pool shadow --train-size 128" in out  # the triggered query of the shadow's MIA set
    assert "--trigger square --trigger-size 6 --trigger-value 255" in out
    victim = f"models/victim/unet_deep/{fixed}/n128_s0/queries/mia.{token}"
    assert f"--victim-query {data}/{victim}" in out
    assert f"--shadow-query {data}/models/shadow/unet_deep/none/n128_s0/queries/mia.{token}" in out
    assert f"attack_models/type2/none.{token}/unet_deep/none/n128_s0" in out


def test_an_aggregate_attack_calibrates_on_the_shadow_query_it_is_given(tmp_path):
    """A triggered query's aggregate attack thresholds on the shadow's triggered query
    (``--shadow-query``), not on its clean one."""
    from segmia.attacks.job import threshold_attack_job
    from test_attacks import _spec, make_query

    data = tmp_path / "data"
    victim = tmp_path / "victim" / "queries" / "victim"
    shadow = tmp_path / "shadow"
    make_query(victim, data, 4.0, 0.3, seed=3)
    make_query(shadow / "queries" / "mia", data, 0.3, 4.0, seed=3)  # clean: inverted
    make_query(shadow / "queries" / "mia.trigger_square_k6_v255", data, 4.0, 0.3, seed=3)
    spec = _spec("agg_mean")
    given = threshold_attack_job(
        kind="agg_mean",
        shadow_model=shadow,
        victim_query=victim,
        data_dir=data,
        spec=spec,
        out_dir=tmp_path / "given",
        shadow_query=shadow / "queries" / "mia.trigger_square_k6_v255",
    )
    default = threshold_attack_job(
        kind="agg_mean",
        shadow_model=shadow,
        victim_query=victim,
        data_dir=data,
        spec=spec,
        out_dir=tmp_path / "default",
    )
    assert given["auc"] == default["auc"] > 0.95, "the scores are the victim's either way"
    assert given["balanced_accuracy"] > 0.9 > default["balanced_accuracy"]
