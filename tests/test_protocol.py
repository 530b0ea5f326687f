"""Protocol switches (docs/protocol.md "Deviations"): each changes exactly its behaviour, and
the planner shares every file a switch does not change."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, load_yaml
from segmia import plan, protocol
from segmia.attacks.job import threshold_attack_job
from segmia.attacks.release import release
from segmia.config import ConfigError, load_config
from segmia.io import read_json, write_json, write_torch
from segmia.models.registry import ByteInput, build_model, load_model
from segmia.models.train import Arrays, Recipe, Task, fit
from segmia.report import ablation
from test_attacks import _spec, make_query

TINY = {"family": "monai_unet", "channels": [4, 8], "strides": [2]}


def _demo(**study) -> dict:
    config = load_yaml(REPO / "config" / "demo.yaml")
    config["studies"] = {"s": {"dataset": "synthetic_ct", "architecture": "unet_small", **study}}
    return load_config(config)


def test_resolve_all_some_and_default():
    assert protocol.resolve("original") == protocol.ORIGINAL
    assert protocol.resolve(None) == protocol.SEGMIA
    some = protocol.resolve({"threshold": "batch_mean"})
    assert some == {**protocol.SEGMIA, "threshold": "batch_mean"}
    # a study's mapping sits over the config's protocol
    assert protocol.resolve({"input_scale": "unit"}, protocol.ORIGINAL) == {
        **protocol.ORIGINAL,
        "input_scale": "unit",
    }


def test_original_protocol_tags_exactly_what_each_switch_changes():
    config = _demo(type="defences", defences=["none", "argmax"], protocol="original")
    paths = {ev.attack: ev for ev in plan.study_evaluations(config, "s") if ev.release == "none"}
    paths |= {
        ev.attack: ev for ev in plan.study_evaluations(config, "s") if ev.release == "none.logits"
    }
    # attacker_input: only the learned Type-I/II attacks read raw logits
    assert paths["type1"].release == "none.logits" and paths["type2"].release == "none.logits"
    # threshold: only the global loss
    assert "global_loss.batchmean" in paths
    # input_scale: every model, victim and shadow
    for ev in plan.study_evaluations(config, "s"):
        assert ev.victim.variant.endswith(".byte") and ev.shadow.variant.endswith(".byte")
    # argmax releases hard labels whatever the attacker_input: no logits token there
    argmax = [ev for ev in plan.study_evaluations(config, "s") if ev.release.startswith("argmax")]
    assert argmax and {ev.release for ev in argmax} == {"argmax"}
    # the specs jobs receive carry config names and the switches
    spec = plan.evaluation_spec(config, paths["global_loss.batchmean"])
    assert spec["attack"] == "global_loss" and spec["victim"]["variant"] == "none"
    assert spec["protocol"] == {
        "input_scale": "byte",
        "attacker_input": "probabilities",
        "threshold": "batch_mean",
    }
    model = plan.model_spec(config, paths["type1"].victim)
    assert model["variant_name"] == "none" and model["training"]["input_scale"] == "byte"
    assert plan.release_spec(config, "none.logits") == {"type": "none", "logits": True}


def test_every_table_of_an_original_protocol_study_reads_its_evaluations():
    config = load_yaml(REPO / "config" / "demo.yaml")
    config["studies"] = {
        "s": {
            "type": "architectures",
            "dataset": "synthetic_ct",
            "architectures": ["unet_small"],
            "protocol": "original",
        }
    }
    config = load_config(config)
    for stem in plan.study_tables(config, "s"):
        table = stem.rsplit("/", 1)[1]
        evaluations = plan.table_evaluations(config, "s", table)
        assert evaluations and {ev.attack_name for ev in evaluations} == {table}
    assert {ev.attack for ev in plan.table_evaluations(config, "s")} >= {"global_loss.batchmean"}


def test_segmia_protocol_leaves_every_name_as_before():
    config = _demo(type="defences", defences=["none", "argmax"])
    for ev in plan.study_evaluations(config, "s"):
        assert "." not in ev.attack + ev.release + ev.victim.variant + ev.shadow.variant
    assert "input_scale" not in plan.model_spec(config, ev.victim)["training"]


def test_ablation_shares_every_model_and_fit_a_switch_does_not_change():
    config = _demo(type="protocol_ablation", seeds=[0])
    evaluations = plan.study_evaluations(config, "s")
    # 3 attacks x 5 arms (original, each switch, all of them), less the arms a switch cannot
    # change: 12 distinct evaluations
    assert len(evaluations) == 12
    models = {m for ev in evaluations for m in (ev.victim, ev.shadow)}
    assert {m.variant for m in models} == {"none", "none.byte"} and len(models) == 4
    fits = {ev.attack_model() for ev in evaluations} - {None}
    # type1/type2 x (logits, byte), (probabilities, byte), (logits, unit), (probabilities, unit)
    assert len(fits) == 8
    arms = {arm: proto for arm, proto, _ in protocol.ablation_arms(config["studies"]["s"])}
    assert arms["original"] == protocol.ORIGINAL
    assert arms["input_scale"] == {**protocol.ORIGINAL, "input_scale": "unit"}
    assert arms["segmia"] == protocol.SEGMIA


def test_reference_attacks_under_byte_inputs_are_refused():
    with pytest.raises(ConfigError, match="input_scale: byte"):
        _demo(type="attack_comparison", defences=["none"], protocol="original")


def test_attacker_input_logits_releases_the_raw_logits():
    logits = torch.randn(2, 1, 4, 4) * 5
    assert torch.equal(release(logits, {"type": "none", "logits": True}), logits)
    assert torch.allclose(release(logits, {"type": "none"}), torch.sigmoid(logits))


def test_byte_input_scale_is_the_same_network_on_0_255_values(tmp_path):
    torch.manual_seed(0)
    unit = build_model(TINY, 1, 1).eval()
    byte = build_model(TINY, 1, 1, input_scale="byte").eval()
    assert isinstance(byte, ByteInput)
    byte.net.load_state_dict(unit.state_dict())
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(byte(x), unit(x * 255.0), atol=1e-5)
        assert not torch.allclose(byte(x), unit(x), atol=1e-3)
    # a byte model's directory rebuilds the wrapper (query, backdoor and distillation load it)
    write_torch(tmp_path / "model.pt", byte.state_dict())
    write_json(tmp_path / "spec.json", {"arch": TINY, "training": {"input_scale": "byte"}})
    loaded, _ = load_model(tmp_path, 1, 1, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(loaded(x), byte(x))


def _tiny_data(n: int) -> Arrays:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 1, 16, 16), dtype=np.uint8)
    masks = (rng.random((n, 16, 16)) > 0.5).astype(np.uint8)
    return Arrays.from_numpy(images, masks, np.arange(n), torch.device("cpu"))


def test_fit_records_the_unweighted_batch_mean_beside_the_weighted_loss(tmp_path):
    data, device = _tiny_data(10), torch.device("cpu")
    torch.manual_seed(0)
    _, rows, _ = fit(
        build_model(TINY, 1, 1),
        data,
        data,
        Recipe(epochs=1, batch_size=4, lr=1e-3),  # batches of 4, 4 and 2
        Task(2, None),
        0,
        tmp_path,
        {},
        device,
    )
    last = rows[-1]
    assert last["train_loss_batch_mean"] != pytest.approx(last["train_loss"], abs=1e-9)


def test_threshold_switch_picks_the_shadows_unweighted_loss(tmp_path):
    victim_q = tmp_path / "victim" / "queries" / "victim"
    make_query(victim_q, tmp_path / "data", 4.0, 0.3, seed=3)
    # thresholds at the two ends: every sample a member, or none
    write_json(
        tmp_path / "victim" / "metrics.json", {"train_loss": 1.0, "train_loss_batch_mean": 0.0}
    )
    out = {}
    for value in ("weighted", "batch_mean"):
        spec = _spec("global_loss") | {"protocol": {"threshold": value}}
        threshold_attack_job(
            kind="global_loss",
            shadow_model=tmp_path / "victim",
            victim_query=victim_q,
            data_dir=tmp_path / "data",
            spec=spec,
            out_dir=tmp_path / value,
        )
        scores = pd.read_csv(tmp_path / value / "scores.csv")
        out[value] = read_json(tmp_path / value / "metrics.json")
        assert out[value]["threshold"] == value
        assert len(scores) == 80
    assert out["weighted"]["accuracy"] == pytest.approx(0.5)  # all members
    assert out["batch_mean"]["accuracy"] == pytest.approx(0.5)  # none
    assert out["weighted"]["auc"] == pytest.approx(out["batch_mean"]["auc"])  # same scores
    assert out["weighted"]["f1"] > 0 and out["batch_mean"]["f1"] == 0


def test_ablation_table_pairs_each_arm_with_the_original_by_seed():
    study = {
        "dataset": "d",
        "architecture": "a",
        "attacks": ["type2", "global_loss"],
        "switches": ["attacker_input", "input_scale", "threshold"],
    }
    rows = []
    for seed in (0, 1):
        for scale in ("unit", "byte"):
            for inp in ("probabilities", "logits"):
                rows.append(
                    {
                        "attack": "type2",
                        "seed": seed,
                        "input_scale": scale,
                        "attacker_input": inp,
                        "threshold": "weighted",
                        "auc": 0.6 + 0.1 * (inp == "logits") + 0.05 * seed,
                        "tpr_at_1pct_fpr": 0.0,
                        "accuracy": 0.5 + 0.01 * (scale == "byte"),
                    }
                )
            for thr in ("weighted", "batch_mean"):
                rows.append(
                    {
                        "attack": "global_loss",
                        "seed": seed,
                        "input_scale": scale,
                        "attacker_input": "probabilities",
                        "threshold": thr,
                        "auc": 0.7,
                        "tpr_at_1pct_fpr": 0.0,
                        "accuracy": 0.6 + 0.02 * (thr == "weighted"),
                    }
                )
    # as collected: with each evaluation's null control (seed 1's type-II null flagged)
    frame = pd.DataFrame(rows).assign(dataset="d", null_auc=0.5, null_excludes_chance=False)
    frame.loc[(frame["attack"] == "type2") & (frame["seed"] == 1), "null_excludes_chance"] = True
    frame = ablation.arms_frame(frame, study)
    table = ablation.changes(frame, study).set_index(["arm", "attack"])
    assert table["null_flag"].to_dict() == {k: k[1] == "type2" for k in table.index}
    assert "0.500 ± 0.000 †" in set(ablation.formatted(table.reset_index())["null AUC"])
    assert table.loc[("attacker_input", "type2"), "d_auc_mean"] == pytest.approx(-0.1)
    assert table.loc[("attacker_input", "global_loss"), "d_auc_mean"] == pytest.approx(0.0)
    assert table.loc[("input_scale", "type2"), "d_accuracy_mean"] == pytest.approx(-0.01)
    assert table.loc[("threshold", "global_loss"), "d_accuracy_mean"] == pytest.approx(0.02)
    assert table.loc[("threshold", "type2"), "d_accuracy_mean"] == pytest.approx(0.0)
    assert table.loc[("original", "type2"), "auc_mean"] == pytest.approx(0.725)
    # every switch at once: probabilities and unit inputs for Type-II
    assert table.loc[("segmia", "type2"), "d_auc_mean"] == pytest.approx(-0.1)
    assert table.loc[("segmia", "type2"), "d_accuracy_mean"] == pytest.approx(-0.01)
    assert (table["seeds"] == 2).all()


def test_validate_every_k_epochs_validates_the_first_every_kth_and_the_last(tmp_path):
    data, device = _tiny_data(8), torch.device("cpu")
    recipe = Recipe(epochs=4, batch_size=4, lr=1e-3, validate_every=2)
    _, rows, _ = fit(
        build_model(TINY, 1, 1), data, data, recipe, Task(2, None), 0, tmp_path, {}, device
    )
    validated = [not np.isnan(r["val_loss"]) for r in rows]
    assert validated == [True, False, True, True]  # epochs 1, 3 and the last
    assert all(not np.isnan(r["train_loss"]) for r in rows)


def test_a_dp_model_accounts_its_spent_epsilon_where_it_is_validated(tmp_path):
    """PRV accounting costs ~0.5 s a call: the per-epoch epsilon is logged on validated epochs,
    and the reported epsilon is the last epoch's (every step accounted)."""
    from segmia.models.train import Extras

    data, device = _tiny_data(16), torch.device("cpu")
    recipe = Recipe(epochs=4, batch_size=4, lr=1e-3, validate_every=2)
    private = {"epsilon": 8.0, "delta": 1e-2, "max_grad_norm": 1.0, "lr": 1e-3}
    model = build_model(TINY, 1, 1, private=True)
    _, rows, info = fit(
        model, data, data, recipe, Task(2, None), 0, tmp_path, {}, device, Extras(private=private)
    )
    spent = [r["epsilon"] for r in rows]
    assert [not np.isnan(e) for e in spent] == [True, False, True, True]
    assert 0 < spent[0] < spent[2] < spent[3] <= 8.0 + 0.5
    assert info["epsilon"] == spent[3] and info["target_epsilon"] == 8.0
