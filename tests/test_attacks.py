"""Attack inputs, releases and learned attacks on planted member/non-member differences."""

import numpy as np
import pandas as pd
import pytest
import torch
from segmia.attacks.features import attack_features
from segmia.attacks.job import eval_attack_job, fit_attack_job, threshold_attack_job
from segmia.attacks.release import release
from segmia.data.prepared import write_prepared
from segmia.io import read_json, write_csv, write_json, write_npy

RECIPE = {
    "classifier": "small_cnn",
    "width": 8,
    "epochs": 6,
    "batch_size": 8,
    "lr": 3e-3,
    "last_k": 2,
    "pretrained": False,
}


def make_query(
    directory, data_dir, confidence_members, confidence_nonmembers, n=40, seed=0, offset=0
):
    """A fake model's answers: logits agree with the true mask with the given confidence."""
    rng = np.random.default_rng(seed)
    masks = (rng.random((2 * n, 16, 16)) > 0.5).astype(np.uint8)
    images = rng.integers(0, 255, (2 * n, 1, 16, 16), dtype=np.uint8)
    ids = [f"s{offset + i}" for i in range(2 * n)]
    index = pd.DataFrame({"sample_id": ids, "group": ids})
    write_prepared(
        data_dir,
        images,
        masks,
        index,
        {"name": "fake", "source": "synthetic_ct", "num_classes": 2, "ignore_index": None},
    )
    sign = masks * 2.0 - 1.0
    conf = np.r_[np.full(n, confidence_members), np.full(n, confidence_nonmembers)][:, None, None]
    logits = sign * conf + rng.normal(0, 1.0, masks.shape)
    write_npy(directory / "logits.npy", logits[:, None].astype(np.float16))
    write_csv(
        directory / "samples.csv",
        pd.DataFrame(
            {
                "sample_id": ids,
                "row": np.arange(2 * n),
                "member": np.r_[np.ones(n, int), np.zeros(n, int)],
            }
        ),
    )
    write_json(directory.parent.parent / "metrics.json", {"train_loss": 0.15})


def _spec(attack):
    return {
        "dataset": "fake",
        "attack": attack,
        "release_name": "none",
        "release": {"type": "none"},
        "seed": 0,
        "train_size": 40,
        "victim": {"arch": "a", "variant": "none"},
        "shadow": {"arch": "a", "variant": "none"},
        "recipe": RECIPE,
    }


@pytest.mark.parametrize(("planted", "expect"), [((3.0, 0.5), "detected"), ((1.5, 1.5), "chance")])
def test_learned_attack_detects_a_planted_difference_and_not_a_null_one(tmp_path, planted, expect):
    shadow_q = tmp_path / "shadow" / "queries" / "shadow"
    victim_q = tmp_path / "victim" / "queries" / "victim"
    make_query(shadow_q, tmp_path / "shadow_data", *planted, seed=1)
    make_query(victim_q, tmp_path / "victim_data", *planted, seed=2)
    device = torch.device("cpu")
    fit_attack_job(
        shadow_query=shadow_q,
        data_dir=tmp_path / "shadow_data",
        spec=_spec("type2") | {"shadow": "fake/shadow"},
        out_dir=tmp_path / "attack",
        device=device,
    )
    metrics = eval_attack_job(
        attack_dir=tmp_path / "attack",
        victim_query=victim_q,
        data_dir=tmp_path / "victim_data",
        spec=_spec("type2"),
        out_dir=tmp_path / "eval",
        device=device,
    )
    if expect == "detected":
        assert metrics["auc"] > 0.9
        assert metrics["accuracy"] > 0.7
    else:
        assert 0.35 < metrics["auc"] < 0.65
    scores = pd.read_csv(tmp_path / "eval" / "scores.csv")
    assert len(scores) == 80 and set(scores["member"]) == {0, 1}
    assert read_json(tmp_path / "eval" / "metrics.json")["auc"] == pytest.approx(metrics["auc"])


def test_global_loss_attack_on_a_planted_difference(tmp_path):
    victim_q = tmp_path / "victim" / "queries" / "victim"
    make_query(victim_q, tmp_path / "data", 4.0, 0.3, seed=3)
    shadow = tmp_path / "victim"  # metrics.json with train_loss written by make_query
    metrics = threshold_attack_job(
        kind="global_loss",
        shadow_model=shadow,
        victim_query=victim_q,
        data_dir=tmp_path / "data",
        spec=_spec("global_loss"),
        out_dir=tmp_path / "eval",
    )
    assert metrics["auc"] > 0.95


def test_argmax_release_gives_only_labels():
    logits = torch.randn(3, 1, 8, 8) * 3
    hard = release(logits, {"type": "argmax"})
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard, (logits > 0).float())
    faithful = release(logits, {"type": "argmax", "faithful": True})
    assert torch.equal(faithful, torch.round(logits))
    multi = release(torch.randn(2, 4, 5, 5), {"type": "argmax"})
    assert torch.equal(multi.sum(1), torch.ones(2, 5, 5)) and set(multi.unique().tolist()) == {
        0.0,
        1.0,
    }


def test_output_noise_is_fixed_per_query_and_stays_a_distribution():
    logits = torch.randn(2, 4, 6, 6)
    spec = {"type": "output_noise", "sigma": 0.2, "seed": 0}
    a = release(logits, spec, ["x", "y"])
    b = release(logits[[1, 0]], spec, ["y", "x"])
    assert torch.allclose(a, b[[1, 0]])
    assert torch.allclose(a.sum(1), torch.ones(2, 6, 6), atol=1e-5) and (a >= 0).all()
    assert not torch.allclose(a, torch.softmax(logits, 1))
    binary = release(torch.randn(2, 1, 6, 6), spec, ["x", "y"])
    assert (binary >= 0).all() and (binary <= 1).all()


def test_type2_features_concatenate_the_one_hot_mask():
    released = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    masks = torch.randint(0, 3, (2, 4, 4))
    masks[0, 0, 0] = 255
    x = attack_features("type2", released, masks, 255)
    assert x.shape == (2, 6, 4, 4)
    assert x[0, 3:, 0, 0].sum() == 0  # void pixel: no class
    assert torch.equal(x[1, 3:].argmax(0), masks[1])


@pytest.mark.parametrize("side", [1, 3, 5, 7, 8, 22])
def test_small_cnn_takes_maps_of_any_size_and_pools_as_before_from_8_pixels(side):
    """A loss-map patch of a 16-pixel image is 5 pixels wide: three 2x2 max-poolings would leave
    nothing (the rehearsal's crash); from 8 pixels up the output is what MaxPool2d gave."""
    from segmia.attacks.classifier import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(3, width=4).eval()
    x = torch.randn(2, 3, side, side + 1)
    out = model(x)
    assert out.shape == (2,) and torch.isfinite(out).all()
    if side >= 8:
        reference = torch.nn.Sequential(
            *[
                torch.nn.MaxPool2d(2) if type(m).__name__ == "HalvePool" else m
                for m in model.features
            ]
        )
        assert torch.equal(model.head(reference(x)).squeeze(1), out)
