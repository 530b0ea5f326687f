"""The min-max defence's switches (penalty, inner_classifier, inner_reset, inner_data,
inner_input): each changes exactly its own behaviour, and the defaults are segmia's as before."""

import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import synthetic_ct_job
from segmia.attacks.classifier import ResNetAttack, SmallCNN
from segmia.data.split import make_split, mia_indices, role_indices, train_indices
from segmia.errors import SegmiaError
from segmia.models.job import _extras
from segmia.models.losses import one_hot_target
from segmia.models.minmax import MinMax, inner_mia_set
from segmia.models.train import Arrays
from segmia.models.weights import LocalWeights, WeightsError, write_fixture
from torch import nn

CPU = torch.device("cpu")
BASE = {"lambda": 0.5, "attack_batch_size": 4, "attack_width": 4}


def arrays(seed: int, n: int, classes: int = 2, ignore: int | None = None) -> Arrays:
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, classes, (n, 16, 16), generator=g, dtype=torch.uint8)
    if ignore is not None:
        masks[:, :2] = ignore
    images = torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
    return Arrays(images, masks)


def tagged(ids, classes: int = 2) -> Arrays:
    """Arrays whose image i is the constant ids[i] (< 256): a model sees which sample it gets."""
    ids = torch.as_tensor(ids, dtype=torch.uint8)
    images = ids.view(-1, 1, 1, 1).expand(len(ids), 1, 16, 16).clone()
    masks = (torch.arange(16 * 16).view(16, 16) % classes).to(torch.uint8).expand(len(ids), 16, 16)
    return Arrays(images, masks.clone())


class Spy(nn.Module):
    """A 1-layer segmentation model that records the sample ids (tagged images) and outputs of
    every call."""

    def __init__(self, out_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(1, out_channels, 3, padding=1)
        self.ids: list[list[int]] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, x):
        self.ids.append((x[:, 0, 0, 0] * 255).round().long().tolist())
        out = 3 * self.conv(x) - 1  # logits well outside [0, 1]
        self.outputs.append(out.detach().clone())
        return out


class Recorder(nn.Module):
    """Wraps the inner attack (same parameters) and records its inputs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def spy_loss(minmax: MinMax) -> list[tuple[list[float], int]]:
    """Record (labels, optimizer state size) of every inner training step."""
    calls = []
    loss = minmax.loss

    def recording(out, y):
        calls.append((y.tolist(), len(minmax.optimizer.state)))
        return loss(out, y)

    minmax.loss = recording
    return calls


# --- defaults: today's behaviour ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("classes", "ignore", "n_members", "n_heldout", "batch", "expected"),
    [
        # the values of the implementation before the switches (same seeds, same tiny models)
        (1, None, 6, 5, 4, (0.28424832224845886, 0.6594645142555237, 0.6)),
        (3, 255, 7, 6, 5, (0.2714727818965912, 0.689882735411326, 0.5)),
    ],
)
def test_defaults_reproduce_the_previous_behaviour(
    classes, ignore, n_members, n_heldout, batch, expected
):
    torch.manual_seed(0)
    model = nn.Conv2d(1, classes, 3, padding=1)
    members = arrays(1, n_members, max(classes, 2), ignore)
    heldout = arrays(2, n_heldout, max(classes, 2), ignore)
    minmax = MinMax(BASE, members, heldout, classes, ignore, CPU)
    assert isinstance(minmax.attack, SmallCNN)
    assert minmax.switches == {
        "penalty": "mean",
        "inner_classifier": "small_cnn",
        "inner_reset": False,
        "inner_data": "train_val",
        "inner_input": "probabilities",
    }
    for epoch in range(2):
        minmax.on_epoch_start(model, torch.Generator().manual_seed(epoch))
    x, y = members.batch(torch.arange(batch), CPU)
    penalty = float(minmax.penalty(model(x), y).detach())
    assert penalty == pytest.approx(expected[0], rel=1e-4)
    assert minmax.last_epoch["minmax_attack_loss"] == pytest.approx(expected[1], rel=1e-4)
    assert minmax.last_epoch["minmax_attack_accuracy"] == pytest.approx(expected[2])
    # the explicit defaults are the same thing
    torch.manual_seed(0)
    model = nn.Conv2d(1, classes, 3, padding=1)
    explicit = {
        **BASE,
        "penalty": "mean",
        "inner_classifier": "small_cnn",
        "inner_reset": False,
        "inner_data": "train_val",
        "inner_input": "probabilities",
    }
    again = MinMax(explicit, members, heldout, classes, ignore, CPU)
    for epoch in range(2):
        again.on_epoch_start(model, torch.Generator().manual_seed(epoch))
    assert float(again.penalty(model(x), y).detach()) == penalty


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("penalty", "max"),
        ("inner_classifier", "resnet18"),
        ("inner_reset", "yes"),
        ("inner_data", "shadow"),
        ("inner_input", "argmax"),
    ],
)
def test_unknown_switch_values_are_refused(key, value):
    with pytest.raises(SegmiaError, match=key):
        MinMax({**BASE, key: value}, arrays(1, 4), arrays(2, 4), 1, None, CPU)


# --- penalty ------------------------------------------------------------------------------------


def test_sum_penalty_is_batch_size_times_the_mean():
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1)
    members, heldout = arrays(1, 6), arrays(2, 6)
    torch.manual_seed(1)
    mean = MinMax(BASE, members, heldout, 1, None, CPU)
    torch.manual_seed(1)
    total = MinMax({**BASE, "penalty": "sum"}, members, heldout, 1, None, CPU)
    for minmax in (mean, total):
        minmax.on_epoch_start(model, torch.Generator().manual_seed(0))
    # the same inner attack: the penalty switch changes nothing else
    for a, b in zip(
        mean.attack.state_dict().values(), total.attack.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    x, y = members.batch(torch.arange(5), CPU)
    logits = model(x)
    m, s = mean.penalty(logits, y), total.penalty(logits, y)
    assert float(s.detach()) == pytest.approx(5 * float(m.detach()), rel=1e-6)
    # and its gradient, too
    (gm,) = torch.autograd.grad(m, logits, retain_graph=True)
    (gs,) = torch.autograd.grad(s, logits)
    assert torch.allclose(gs, 5 * gm, rtol=1e-5, atol=1e-9)


# --- inner_input --------------------------------------------------------------------------------


@pytest.mark.parametrize("inner_input", ["probabilities", "logits"])
@pytest.mark.parametrize("classes", [1, 3])
def test_inner_input_is_what_the_inner_attack_sees(inner_input, classes):
    torch.manual_seed(0)
    model = Spy(classes)
    members, heldout = tagged(range(6), max(classes, 2)), tagged(range(100, 106), max(classes, 2))
    minmax = MinMax({**BASE, "inner_input": inner_input}, members, heldout, classes, None, CPU)
    minmax.attack = Recorder(minmax.attack)

    def expected(logits, masks):
        released = logits if inner_input == "logits" else None
        if released is None:
            released = torch.sigmoid(logits) if classes == 1 else torch.softmax(logits, 1)
        target, _ = one_hot_target(masks.long(), classes, None)
        return torch.cat([released, target], dim=1)

    # training: every batch is (members' outputs, held-out outputs), in the model's call order
    minmax.on_epoch_start(model, torch.Generator().manual_seed(0))
    assert len(minmax.attack.inputs) == 3
    outputs = iter(model.outputs)
    for seen in minmax.attack.inputs:
        logits = torch.cat([next(outputs), next(outputs)])
        masks = members.masks[: len(logits)]  # every tagged mask is the same
        assert torch.allclose(seen, expected(logits, masks))
    if inner_input == "logits":
        assert seen[:, :classes].min() < 0 or seen[:, :classes].max() > 1
    # penalty: the batch's own logits (with gradient) or their probabilities
    x, y = members.batch(torch.arange(4), CPU)
    logits = model(x)
    minmax.penalty(logits, y)
    assert torch.allclose(minmax.attack.inputs[-1], expected(logits.detach(), y))


# --- inner_reset --------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True])
def test_inner_reset_gives_a_fresh_optimizer_every_epoch(reset):
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1)
    minmax = MinMax({**BASE, "inner_reset": reset}, arrays(1, 6), arrays(2, 6), 1, None, CPU)
    calls = spy_loss(minmax)
    first = minmax.optimizer
    steps = []
    for epoch in range(3):
        minmax.on_epoch_start(model, torch.Generator().manual_seed(epoch))
        steps.append(int(next(iter(minmax.optimizer.state.values()))["step"]))
    per_epoch = 3  # 6 members and 6 held-out, 2 + 2 per batch
    assert len(calls) == 3 * per_epoch
    # the optimizer's state at the first step of each epoch: empty only on a fresh optimizer
    at_epoch_start = [calls[e * per_epoch][1] for e in range(3)]
    if reset:
        assert at_epoch_start == [0, 0, 0]
        assert steps == [per_epoch] * 3
        assert minmax.optimizer is not first
        assert minmax.optimizer.param_groups[0]["lr"] == BASE.get("attack_lr", 1e-3)
    else:
        assert at_epoch_start[0] == 0 and all(n > 0 for n in at_epoch_start[1:])
        assert steps == [per_epoch, 2 * per_epoch, 3 * per_epoch]
        assert minmax.optimizer is first


# --- inner_data ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_and_data():
    """A synthetic split (pool sizes as the study's tiny configs) and tagged prepared arrays:
    image row r is the constant r."""
    n = 120
    index = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "group": np.arange(n)})
    sizes = dict(victim_pool=60, shadow_pool=60, train_size=20, val_size=10, mia_size=8)
    split = make_split(index, sizes, 0)
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 1, 16, 16))
    masks = np.zeros((n, 16, 16), np.uint8)
    masks[:, 8:] = 1
    data = SimpleNamespace(
        images=np.ascontiguousarray(images), masks=masks, out_channels=1, ignore_index=None
    )
    return split, sizes, data


def model_spec(sizes, **variant) -> dict:
    spec = {
        "dataset": "ct",
        "role": "victim",
        "pool": "victim",
        "variant_name": "minmax",
        "variant": {"type": "minmax", **BASE, **variant},
        "train_size": 20,
        "seed": 0,
    }
    if sizes is not None:
        spec["split"] = sizes
    return spec


def inner_rows(calls, model: Spy) -> dict[int, list[float]]:
    """{sample id: labels it was trained with} of one epoch."""
    seen: dict[int, list[float]] = {}
    ids = [i for batch in model.ids for i in batch]
    labels = [label for batch, _ in calls for label in batch]
    assert len(ids) == len(labels)
    for i, label in zip(ids, labels, strict=True):
        seen.setdefault(i, []).append(label)
    return seen


def test_mia_set_inner_data_is_the_models_mia_set(split_and_data):
    split, sizes, data = split_and_data
    spec = model_spec(sizes, inner_data="mia_set", attack_batch_size=4)
    members, nonmembers = mia_indices(split, "victim", 20, sizes)
    assert len(members) == len(nonmembers) == 8
    train_rows = train_indices(split, "victim", 20)
    train = Arrays.from_numpy(data.images, data.masks, train_rows, CPU)
    val = Arrays.from_numpy(data.images, data.masks, role_indices(split, "victim", "val"), CPU)
    torch.manual_seed(0)
    minmax = _extras(spec, data, train, val, CPU, split=split, on_device=CPU).regulariser
    calls = spy_loss(minmax)
    model = Spy()
    minmax.on_epoch_start(model, torch.Generator().manual_seed(0))
    # one pass over exactly the MIA set, each sample once, members 1 and non-members 0
    seen = inner_rows(calls, model)
    assert seen == {**{int(r): [1.0] for r in members}, **{int(r): [0.0] for r in nonmembers}}
    # in mixed, shuffled batches of attack_batch_size (not member/non-member halves)
    assert [len(b) for b in model.ids] == [4, 4, 4, 4]
    assert not all(labels == [1.0, 1.0, 0.0, 0.0] for labels, _ in calls)
    order = [i for batch in model.ids for i in batch]
    assert order != [int(r) for r in np.concatenate([members, nonmembers])]
    # the shuffle follows the epoch's generator
    model2 = Spy()
    minmax.on_epoch_start(model2, torch.Generator().manual_seed(0))
    assert model2.ids == model.ids
    # the same as the rows the attacks are evaluated on (inner_mia_set)
    arrays_, labels = inner_mia_set(split, spec, data, CPU)
    assert arrays_.images[:, 0, 0, 0].tolist() == [*members, *nonmembers]
    assert labels.tolist() == [1.0] * 8 + [0.0] * 8


def test_train_val_inner_data_is_the_training_and_validation_sets(split_and_data):
    split, sizes, data = split_and_data
    train_rows = train_indices(split, "victim", 20)
    val_rows = role_indices(split, "victim", "val")
    train = Arrays.from_numpy(data.images, data.masks, train_rows, CPU)
    val = Arrays.from_numpy(data.images, data.masks, val_rows, CPU)
    # no split needed (and none passed) for train_val
    minmax = _extras(model_spec(None), data, train, val, CPU).regulariser
    assert minmax.mia is None
    calls = spy_loss(minmax)
    model = Spy()
    minmax.on_epoch_start(model, torch.Generator().manual_seed(0))
    seen = inner_rows(calls, model)
    k = min(len(train_rows), len(val_rows))
    assert sum(len(v) for v in seen.values()) == 2 * k
    assert {i for i, v in seen.items() if v == [1.0]} <= {int(r) for r in train_rows}
    assert {i for i, v in seen.items() if v == [0.0]} == {int(r) for r in val_rows[:k]}
    assert len([i for i, v in seen.items() if v == [1.0]]) == k
    # balanced batches: 2 members then 2 held-out
    assert all(labels == [1.0, 1.0, 0.0, 0.0] for labels, _ in calls)


def test_mia_set_without_split_sizes_is_a_clear_error(split_and_data):
    split, _, data = split_and_data
    train = Arrays.from_numpy(data.images, data.masks, np.arange(4), CPU)
    with pytest.raises(SegmiaError, match=r"inner_data: mia_set.*'split'"):
        _extras(model_spec(None, inner_data="mia_set"), data, train, train, CPU, split=split)
    with pytest.raises(SegmiaError, match="MIA set"):
        MinMax({**BASE, "inner_data": "mia_set"}, train, train, 1, None, CPU)


# --- inner_classifier ---------------------------------------------------------------------------


def test_resnet34_inner_attack_and_state_dict_round_trip(caplog):
    spec = {
        **BASE,
        "inner_classifier": "resnet34",
        "inner_reset": True,
        "inner_data": "mia_set",
        "inner_input": "logits",
        "penalty": "sum",
        "attack_lr": 1e-4,
    }
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1)
    mia = (arrays(3, 8), torch.tensor([1.0] * 4 + [0.0] * 4))
    with caplog.at_level(logging.WARNING, logger="segmia"):
        minmax = MinMax(spec, None, None, 1, None, CPU, mia=mia)
    assert "random initialisation" in caplog.text
    assert isinstance(minmax.attack, ResNetAttack)
    from torchvision.models import ResNet

    assert isinstance(minmax.attack.net, ResNet) and len(minmax.attack.net.layer3) == 6
    assert minmax.attack.adapt.in_channels == 2 and minmax.attack.adapt.out_channels == 3
    assert minmax.attack.net.fc.out_features == 1
    minmax.on_epoch_start(model, torch.Generator().manual_seed(0))
    x, y = mia[0].batch(torch.arange(4), CPU)
    penalty = minmax.penalty(model(x), y)
    assert 0 < float(penalty.detach()) <= 0.5 * 4
    state = minmax.state_dict()

    torch.manual_seed(1)  # another initialisation, then the checkpoint's state
    resumed = MinMax(spec, None, None, 1, None, CPU, mia=mia)
    assert not torch.equal(resumed.attack.adapt.weight, minmax.attack.adapt.weight)
    resumed.load_state_dict(state)
    resumed.attack.eval()  # as after every on_epoch_start (fit calls it before any penalty)
    for a, b in zip(
        minmax.attack.state_dict().values(), resumed.attack.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert resumed.last_epoch == minmax.last_epoch
    assert float(resumed.penalty(model(x), y).detach()) == pytest.approx(
        float(penalty.detach()), rel=1e-6
    )


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"penalty": "sum", "inner_input": "logits"},
        {"inner_reset": True},
        {"inner_data": "mia_set"},
    ],
)
def test_checkpoint_resume_continues_exactly(switches):
    """Two epochs straight equal one epoch, a state dict round trip, and the second epoch."""
    spec = {**BASE, **switches}
    members, heldout = arrays(1, 6), arrays(2, 6)
    mia = (arrays(3, 6), torch.tensor([1.0, 0.0] * 3))

    def run(resume: bool):
        torch.manual_seed(0)
        model = nn.Conv2d(1, 1, 3, padding=1)
        minmax = MinMax(spec, members, heldout, 1, None, CPU, mia=mia)
        minmax.on_epoch_start(model, torch.Generator().manual_seed(0))
        if resume:
            state = minmax.state_dict()
            torch.manual_seed(5)
            minmax = MinMax(spec, members, heldout, 1, None, CPU, mia=mia)
            minmax.load_state_dict(state)
        minmax.on_epoch_start(model, torch.Generator().manual_seed(1))
        x, y = members.batch(torch.arange(4), CPU)
        return float(minmax.penalty(model(x), y).detach()), minmax.last_epoch

    assert run(False) == run(True)


def test_resnet34_inner_attack_loads_the_inner_weights(tmp_path):
    path = tmp_path / "resnet34-b627a593.pth"
    digest = write_fixture(path.name, path, seed=3)
    weights = LocalWeights(path, digest)
    spec = {**BASE, "inner_classifier": "resnet34"}
    minmax = MinMax(spec, arrays(1, 4), arrays(2, 4), 1, None, CPU, weights=weights)
    file = torch.load(path, weights_only=True)
    assert torch.equal(minmax.attack.net.conv1.weight, file["conv1.weight"])
    assert torch.equal(minmax.attack.net.layer4[2].bn2.weight, file["layer4.2.bn2.weight"])
    # another file name, or weights for the small CNN, are refused
    other = tmp_path / "resnet34-333f7ec4.pth"
    other.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="resnet34-b627a593.pth"):
        MinMax(spec, arrays(1, 4), arrays(2, 4), 1, None, CPU, weights=LocalWeights(other, digest))
    with pytest.raises(WeightsError, match="drop --inner-weights"):
        MinMax(BASE, arrays(1, 4), arrays(2, 4), 1, None, CPU, weights=weights)


# --- the train step ---------------------------------------------------------------------------


def test_train_cli_parses_inner_weights(monkeypatch, tmp_path):
    from segmia import cli

    got = {}
    monkeypatch.setattr("segmia.models.job.train_job", lambda *a, **kw: got.update(kw))
    monkeypatch.setattr(cli, "_device", lambda args: CPU)
    common = ["train", "--data", "d", "--split", "s.csv", "--spec", "{}", "--out", "o"]
    args = cli.parser().parse_args(
        [
            *common,
            "--inner-weights",
            "w/resnet34-b627a593.pth",
            "--inner-weights-digest",
            "sha256:ab",
        ]
    )
    args.func(args)
    assert got["inner_weights"] == LocalWeights(cli.Path("w/resnet34-b627a593.pth"), "sha256:ab")
    assert got["weights"] is None
    args = cli.parser().parse_args(common)
    args.func(args)
    assert got["inner_weights"] is None


def test_train_job_with_the_original_switches(tmp_path):
    """Through train_job: the original study's four switches, resnet34 at random, two epochs."""
    from segmia.io import read_json
    from segmia.models.job import train_job
    from test_models import ARCHS

    sizes = dict(victim_pool=60, shadow_pool=60, train_size=12, val_size=8, mia_size=6)
    synthetic_ct_job(tmp_path, sizes, groups=30)
    spec = {
        **model_spec(
            sizes,
            inner_classifier="resnet34",
            inner_reset=True,
            inner_data="mia_set",
            inner_input="logits",
            penalty="sum",
            attack_lr=1e-4,
        ),
        "arch_name": "tiny",
        "arch": ARCHS["monai_unet"],
        "train_size": 12,
        "training": {"epochs": 2, "batch_size": 4, "lr": 3e-3},
    }
    metrics = train_job(
        data_dir=tmp_path / "data",
        split_path=tmp_path / "split.csv",
        spec=spec,
        out_dir=tmp_path / "m",
        device=CPU,
    )
    assert metrics["epochs"] == 2
    log = pd.read_csv(tmp_path / "m" / "history.csv")
    assert {"minmax_penalty", "minmax_attack_loss", "minmax_attack_accuracy"} <= set(log.columns)
    assert read_json(tmp_path / "m" / "spec.json")["variant"]["inner_data"] == "mia_set"
    # inner weights for a variant that is not min-max are refused
    none = {**spec, "variant": {"type": "none"}, "variant_name": "none"}
    weights = LocalWeights(tmp_path / "resnet34-b627a593.pth")
    with pytest.raises(WeightsError, match="not min-max"):
        train_job(
            data_dir=tmp_path / "data",
            split_path=tmp_path / "split.csv",
            spec=none,
            out_dir=tmp_path / "n",
            device=CPU,
            inner_weights=weights,
        )
