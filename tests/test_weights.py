"""Pretrained weights: pins, the verified fetch (from a server on 127.0.0.1), files placed by hand,
loading into smp encoders and the attack's ResNet (never downloading), and the fetch_weights rule.

The weight files are FIXTURES: state dicts of randomly initialised torchvision models with the real
checkpoints' names and shapes (``weights.write_fixture``; the VGG without its classifier head).
Their content is not the published one, so they pass only with a full digest in
``weights.checksums``, which is what the tests give.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
import torchvision
from conftest import CONFIGS, REPO, load_yaml, run_snakemake, write_config
from segmia import plan
from segmia.config import load_config
from segmia.data.download import Policy, fetch, parse_checksum, verify
from segmia.errors import ConfigError, DataError
from segmia.models import weights
from segmia.models.registry import build_model
from segmia.models.weights import LocalWeights, WeightsError
from upstream import Upstream, free_port

ENCODERS = {
    "resnet34": ("resnet34-333f7ec4.pth", "conv1.weight"),
    "mobilenet_v2": ("mobilenet_v2-b0353104.pth", "features.0.0.weight"),
    "vgg11": ("vgg11-bbd30ac9.pth", "features.0.weight"),
}
ATTACK18 = "resnet18-f37072fd.pth"
FAST = {"retries": 1, "backoff": 0.001, "timeout": 5}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """{file name: (path, "sha256:<hex>")} of fixture weight files."""
    directory = tmp_path_factory.mktemp("fixture_weights")
    out = {}
    for name in [f for f, _ in ENCODERS.values()] + [ATTACK18]:
        out[name] = (directory / name, weights.write_fixture(name, directory / name))
    return out


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def serve(server, fixtures, *names):
    for name in names:
        server.files[f"/{name}"] = fixtures[name][0].read_bytes()


def params(server, fixtures, *names, **extra):
    checksums = {n: fixtures[n][1] for n in names}
    return {**FAST, "base_url": server.url, "checksums": checksums, **extra}


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- the registry -------------------------------------------------------------------------------


def test_pins_are_the_published_prefixes_of_the_official_files():
    for name, pin in weights.PINS.items():
        # torch.hub's convention: the hex digits after the '-' are the sha256's prefix
        assert pin == f"sha256:{torch.hub.HASH_REGEX.search(name).group(1)}"
        assert pin == f"sha256:{weights.published_prefix(name)}" and len(pin) >= 7 + 8
        assert weights.url(name) == f"https://download.pytorch.org/models/{name}"
    assert set(weights.PINS) == set(weights.FILES)
    # the attack classifier: torchvision's own weights; the encoders: what smp loaded
    tv = torchvision.models
    assert weights.url(weights.ATTACK_FILES["resnet34"]) == tv.ResNet34_Weights.IMAGENET1K_V1.url
    assert weights.url(weights.ATTACK_FILES["resnet18"]) == tv.ResNet18_Weights.IMAGENET1K_V1.url
    assert weights.url(ENCODERS["mobilenet_v2"][0]) == tv.MobileNet_V2_Weights.IMAGENET1K_V1.url
    from segmentation_models_pytorch.encoders.vgg import pretrained_settings

    assert weights.url(ENCODERS["vgg11"][0]) == pretrained_settings["vgg11"]["imagenet"]["url"]
    for (encoder, kind), name in weights.ENCODER_FILES.items():
        assert weights.FILES[name].builder == encoder and kind == "imagenet"


def test_the_config_plans_only_the_weight_files_it_needs():
    paper = load_yaml(REPO / "config" / "config.yaml")
    assert plan.weight_files(load_config(paper)) == [
        "mobilenet_v2-b0353104.pth",
        "resnet34-333f7ec4.pth",
        "resnet34-b627a593.pth",
        "vgg11-bbd30ac9.pth",
    ]
    assert plan.weight_files(load_config(load_yaml(CONFIGS / "tiny.yaml"))) == []
    # only the architectures some study uses; the attack's only with a learned attack
    one = {
        **paper,
        "studies": {"t": {"type": "architectures", "dataset": "liver", "architectures": ["vgg11"]}},
    }
    assert plan.weight_files(load_config(one)) == ["resnet34-b627a593.pth", "vgg11-bbd30ac9.pth"]
    one["studies"]["t"]["attacks"] = ["global_loss"]
    assert plan.weight_files(load_config(one)) == ["vgg11-bbd30ac9.pth"]
    one["studies"]["t"]["attacks"] = ["loss_map"]
    one["attack"] = {**paper["attack"], "classifier": "resnet18"}
    assert plan.weight_files(load_config(one)) == [ATTACK18, "vgg11-bbd30ac9.pth"]
    one["attack"]["pretrained"] = False
    one["architectures"] = {
        **paper["architectures"],
        "vgg11": {"family": "smp_unet", "encoder": "vgg11"},
    }
    assert plan.weight_files(load_config(one)) == []


def test_config_keys_are_checked():
    tiny = load_yaml(CONFIGS / "tiny.yaml")
    resolved = load_config(tiny)
    assert resolved["weights"] == {
        "base_url": "https://download.pytorch.org/models",
        "checksums": {},
        "retries": 5,
        "backoff": 2.0,
        "timeout": 60,
    }
    for bad, match in [
        ({"weights": {"checksums": {"resnet50-0676ba61.pth": "sha256:" + "0" * 64}}}, "registered"),
        ({"weights": {"checksums": {ENCODERS["vgg11"][0]: "sha256:bbd30ac9"}}}, "64 hex"),
        ({"weights": {"base_url": "ftp://mirror/models"}}, "http"),
        (
            {
                "architectures": {
                    "a": {
                        "family": "smp_unet",
                        "encoder": "resnet50",
                        "encoder_weights": "imagenet",
                    }
                }
            },
            "architectures.a.*no pinned weight file",
        ),
        (
            {
                "architectures": {
                    "a": {
                        "family": "smp_unet",
                        "encoder": "vgg11",
                        "encoder_depth": 3,
                        "decoder_channels": [8, 4],
                    }
                }
            },
            "one block per encoder stage",
        ),
        (
            {
                "architectures": {
                    "a": {"family": "smp_unet", "encoder": "vgg11", "encoder_depth": 2}
                }
            },
            ">= 3",
        ),
    ]:
        config = {**tiny, **bad}
        if "architectures" in bad:
            config["studies"] = {"s": {**tiny["studies"]["grid"], "architectures": ["a"]}}
        with pytest.raises(ConfigError, match=match):
            load_config(config)


# --- digests and fetching -----------------------------------------------------------------------


def test_sha256_prefixes_follow_torch_hubs_convention(tmp_path, upstream):
    data = b"not really a checkpoint" * 1000
    real = hashlib.sha256(data).hexdigest()
    assert parse_checksum(f"sha256:{real[:8]}", prefix=True) == ("sha256", real[:8])
    for text in (f"sha256:{real[:7]}", f"md5:{real[:8]}"):
        with pytest.raises(DataError, match="not a checksum"):
            parse_checksum(text, prefix=True)
    with pytest.raises(DataError, match="not a checksum"):
        parse_checksum(f"sha256:{real[:8]}")  # prefixes only where asked for
    assert verify({"sha256": real}, ("sha256", real[:10]))
    assert not verify({"sha256": real}, ("sha256", "0" + real[1:10]))
    # through the downloader, as for a published prefix
    upstream.files["/x-abc.pth"] = data
    fetch(f"{upstream.url}/x-abc.pth", tmp_path / "ok.pth", expected=("sha256", real[:8]))
    assert (tmp_path / "ok.pth").read_bytes() == data
    wrong = f"{(int(real[:8], 16) ^ 1):08x}"
    with pytest.raises(DataError, match=f"starting with {wrong}"):
        fetch(
            f"{upstream.url}/x-abc.pth",
            tmp_path / "bad.pth",
            expected=("sha256", wrong),
            policy=Policy(retries=0),
        )
    assert leftovers(tmp_path) == ["ok.pth"]


def test_fetch_downloads_verifies_and_resumes(tmp_path, upstream, fixtures):
    name = ENCODERS["mobilenet_v2"][0]
    serve(upstream, fixtures, name)
    upstream.drop_once[f"/{name}"] = 1_000_000
    dest = tmp_path / "weights" / name
    digest = weights.fetch_file(dest, params(upstream, fixtures, name))
    assert f"sha256:{digest}" == fixtures[name][1]
    assert dest.read_bytes() == fixtures[name][0].read_bytes()
    assert leftovers(dest.parent) == [name]
    assert upstream.requests[1][2]["Range"].startswith("bytes=")  # resumed the .part file
    # a second fetch verifies the file that is there and downloads nothing
    count = len(upstream.requests)
    weights.fetch_file(dest, params(upstream, fixtures, name))
    assert len(upstream.requests) == count


def test_a_wrong_digest_or_a_corrupt_file_is_rejected(tmp_path, upstream, fixtures):
    name = ENCODERS["resnet34"][0]
    serve(upstream, fixtures, name)
    dest = tmp_path / "weights" / name
    # the built-in pin (the published prefix): the fixture is not the official file
    with pytest.raises(WeightsError, match="starting with 333f7ec4") as err:
        weights.fetch_file(dest, {**FAST, "base_url": upstream.url})
    message = str(err.value)
    assert "\n" not in message and "published sha256 prefix" in message and name in message
    assert leftovers(dest.parent) == []
    # a wrong full digest
    with pytest.raises(WeightsError, match="checksum mismatch"):
        weights.fetch_file(
            dest, {**FAST, "base_url": upstream.url, "checksums": {name: "sha256:" + "ab" * 32}}
        )
    assert leftovers(dest.parent) == []
    # a corrupt download (one byte flipped) against the right digest
    data = bytearray(upstream.files[f"/{name}"])
    data[len(data) // 2] ^= 0xFF
    upstream.files[f"/{name}"] = bytes(data)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        weights.fetch_file(dest, params(upstream, fixtures, name))
    assert leftovers(dest.parent) == []
    # a missing file: one paragraph naming the official URL and what to do by hand
    with pytest.raises(WeightsError, match="404") as err:
        weights.fetch_file(tmp_path / "weights" / ATTACK18, {**FAST, "base_url": upstream.url})
    assert "download.pytorch.org/models/resnet18-f37072fd.pth" in str(err.value)
    assert "place it at" in str(err.value)


def test_a_file_placed_by_hand_is_verified_and_used_without_network(tmp_path, fixtures):
    name = ENCODERS["vgg11"][0]
    dest = tmp_path / "weights" / name
    dest.parent.mkdir()
    shutil.copy(fixtures[name][0], dest)
    offline = {**FAST, "base_url": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    checksums = {name: fixtures[name][1]}
    assert (
        f"sha256:{weights.fetch_file(dest, {**offline, 'checksums': checksums})}" == checksums[name]
    )
    with pytest.raises(WeightsError, match="Delete .* rerun") as err:  # the published prefix
        weights.fetch_file(dest, offline)
    assert str(dest) in str(err.value)
    assert dest.exists()  # a file placed by hand is never deleted


# --- loading ------------------------------------------------------------------------------------


def fixture_state(fixtures, name):
    return torch.load(fixtures[name][0], weights_only=True)


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize(("in_channels", "depth"), [(3, 5), (1, 3)])
def test_a_model_starts_from_exactly_the_fixtures_encoder_tensors(
    fixtures, encoder, in_channels, depth
):
    name, first_conv = ENCODERS[encoder]
    arch = {
        "family": "smp_unet",
        "encoder": encoder,
        "encoder_weights": "imagenet",
        "encoder_depth": depth,
    }
    local = LocalWeights(*fixtures[name])
    model = build_model(arch, in_channels, 2, weights=local)
    state, own = fixture_state(fixtures, name), model.encoder.state_dict()
    assert not any(k.startswith(weights.HEADS) for k in own)
    for key, tensor in own.items():
        if key.endswith("num_batches_tracked"):
            continue
        expected = state[key]
        if key == first_conv and in_channels == 1:  # smp's adaptation: the RGB kernels summed
            expected = expected.sum(1, keepdim=True)
        assert torch.equal(tensor, expected), key
    if depth < 5:  # the unused stages are gone (their keys were not loaded anywhere)
        assert len(own) < len(state) - sum(k.startswith(weights.HEADS) for k in state)
    logits = model(torch.rand(2, in_channels, 32, 32))
    assert logits.shape == (2, 2, 32, 32)
    # DP-SGD variant: loaded first, then BatchNorm -> GroupNorm; the convolutions are the fixture's
    private = build_model(arch, in_channels, 2, private=True, weights=local)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in private.modules())
    convs = {k: v for k, v in private.encoder.state_dict().items() if v.dim() == 4}
    assert convs and all(torch.equal(v, own[k]) for k, v in convs.items())


def test_the_first_conv_of_a_two_channel_model_is_adapted_like_smp(fixtures):
    name, first = ENCODERS["resnet34"]
    arch = {
        "family": "smp_unet",
        "encoder": "resnet34",
        "encoder_weights": "imagenet",
        "encoder_depth": 3,
    }
    model = build_model(arch, 2, 1, weights=LocalWeights(*fixtures[name]))
    rgb = fixture_state(fixtures, name)[first]
    expected = torch.stack([rgb[:, 0], rgb[:, 1]], dim=1) * 3 / 2
    assert torch.allclose(model.encoder.state_dict()[first], expected)


def test_the_attack_classifier_loads_the_torchvision_file(fixtures):
    from segmia.attacks.classifier import build_classifier

    recipe = {"classifier": "resnet18", "pretrained": True}
    model = build_classifier(recipe, 2, LocalWeights(*fixtures[ATTACK18]))
    state = fixture_state(fixtures, ATTACK18)
    own = model.net.state_dict()
    loaded = [k for k in own if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    assert loaded and all(torch.equal(own[k], state[k]) for k in loaded)
    assert own["fc.weight"].shape == (1, 512)  # the single-logit head
    assert model(torch.rand(2, 2, 32, 32)).shape == (2,)
    # without a file (an attack rebuilt for evaluation): random, never downloaded
    assert not torch.equal(build_classifier(recipe, 2).net.conv1.weight, state["conv1.weight"])


def test_loading_refuses_what_is_not_the_expected_plain_checkpoint(tmp_path, fixtures):
    name = ENCODERS["resnet34"][0]
    arch = {
        "family": "smp_unet",
        "encoder": "resnet34",
        "encoder_weights": "imagenet",
        "encoder_depth": 3,
    }

    def build(path, digest=None):
        return build_model(arch, 1, 1, weights=LocalWeights(path, digest))

    def digest(path):
        return f"sha256:{weights.sha256(path)}"

    missing = tmp_path / "weights" / name
    with pytest.raises(WeightsError, match="missing.*fetch_weights") as err:
        build(missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    # wrong content for the pin of its name
    missing.parent.mkdir()
    shutil.copy(fixtures[name][0], missing)
    with pytest.raises(WeightsError, match="333f7ec4"):
        build(missing)
    # a pickled module instead of a state dict
    pickled = tmp_path / "pickled.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(WeightsError, match="weights_only=True"):
        build(pickled, digest(pickled))
    # a nested checkpoint
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": fixture_state(fixtures, name)}, nested)
    with pytest.raises(WeightsError, match="not a plain state dict"):
        build(nested, digest(nested))
    # another network's checkpoint: missing keys, shapes that do not fit, or extra blocks
    other = fixtures[ENCODERS["mobilenet_v2"][0]][0]
    with pytest.raises(WeightsError, match="missing key"):
        build(other, digest(other))
    resnet18 = fixtures[ATTACK18][0]  # every key of a ResNet-18 is in a ResNet-34, shapes equal
    with pytest.raises(WeightsError, match="missing key"):
        build(resnet18, digest(resnet18))
    from segmia.attacks.classifier import build_classifier

    with pytest.raises(WeightsError, match="unexpected key.*layer1.2"):  # ResNet-34 into a -18
        build_classifier(
            {"classifier": "resnet18", "pretrained": True},
            1,
            LocalWeights(fixtures[name][0], fixtures[name][1]),
        )
    bad_shape = tmp_path / "shape.pth"
    state = fixture_state(fixtures, name)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, bad_shape)
    with pytest.raises(
        WeightsError, match=r"shape mismatch.*layer1.0.conv1.weight \(64, 64, 1, 1\)"
    ):
        build(bad_shape, digest(bad_shape))


def test_a_training_job_needs_exactly_its_weight_file(fixtures):
    name = ENCODERS["vgg11"][0]
    local = LocalWeights(*fixtures[name])
    with pytest.raises(WeightsError, match="no weight file was given.*--weights"):
        weights.require(name, None, "architecture 'vgg11'")
    with pytest.raises(WeightsError, match="drop --weights"):
        weights.require(None, local, "the attack classifier")
    with pytest.raises(WeightsError, match="resnet34-333f7ec4.pth"):
        weights.require(ENCODERS["resnet34"][0], local, "architecture 'resnet34'")
    weights.require(name, local, "architecture 'vgg11'")
    with pytest.raises(WeightsError, match="drop --weights"):
        build_model({"family": "smp_unet", "encoder": "vgg11"}, 1, 1, weights=local)


def test_fixtures_are_reproducible(tmp_path, fixtures):
    name = ENCODERS["mobilenet_v2"][0]
    assert weights.write_fixture(name, tmp_path / name) == fixtures[name][1]
    assert weights.write_fixture(name, tmp_path / "other", seed=1) != fixtures[name][1]


# --- through Snakemake --------------------------------------------------------------------------


@pytest.mark.slow
def test_fetch_weights_runs_once_and_jobs_load_without_network(tmp_path, tiny_config, fixtures):
    """The encoder file comes from the test server, the attack's is placed by hand; then the
    server goes away (and base_url points nowhere) and training is forced to rerun."""
    encoder = ENCODERS["resnet34"][0]
    config = {
        **tiny_config,
        "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
        "attack": {
            "classifier": "resnet18",
            "pretrained": True,
            "epochs": 1,
            "batch_size": 8,
            "last_k": 1,
        },
        "architectures": {
            "r34": {
                "family": "smp_unet",
                "encoder": "resnet34",
                "encoder_weights": "imagenet",
                "encoder_depth": 3,
                "decoder_channels": [16, 8, 4],
            }
        },
        "studies": {
            "grid": {
                "type": "architectures",
                "dataset": "ct",
                "architectures": ["r34"],
                "attacks": ["type1"],
            }
        },
    }
    resolved = load_config(config)
    assert plan.weight_files(resolved) == [ATTACK18, encoder]
    shadow = plan.Model("ct", "shadow", "r34", "none", 24, 0)
    [evaluation] = plan.study_evaluations(resolved, "grid")
    root, res = tiny_config["results"], tiny_config["resources"]
    targets = [
        f"{root}/{shadow.path()}/metrics.json",
        f"{root}/{evaluation.attack_model()}/attack.pt",
    ]
    hand = tmp_path / "resources" / "weights" / ATTACK18
    hand.parent.mkdir(parents=True)
    shutil.copy(fixtures[ATTACK18][0], hand)
    checksums = {encoder: fixtures[encoder][1], ATTACK18: fixtures[ATTACK18][1]}

    server = Upstream()
    try:
        serve(server, fixtures, encoder)
        config["weights"] = {**FAST, "base_url": server.url, "checksums": checksums}
        path = write_config(tmp_path, config)
        proc = run_snakemake("--cores", "2", *targets, workdir=tmp_path, configfile=path)
    finally:
        server.close()
    assert server.paths() == [f"/{encoder}"]  # fetched once; the hand-placed file not at all
    assert (proc.stdout + proc.stderr).count("rule fetch_weights:") == 1
    assert (tmp_path / "resources" / "weights" / encoder).read_bytes() == fixtures[encoder][
        0
    ].read_bytes()
    train_log = (tmp_path / "results" / "logs" / "train" / f"{shadow.path()}.log").read_text()
    assert f"loaded {res}/weights/{encoder} into the smp encoder resnet34" in train_log
    fit_log = (
        tmp_path / "results" / "logs" / "fit_attack" / f"{evaluation.attack_model()}.log"
    ).read_text()
    assert f"{res}/weights/{ATTACK18} into the ResNet-18 attack classifier" in fit_log

    # offline: the server is gone and base_url points where nothing listens
    config["weights"]["base_url"] = f"http://127.0.0.1:{free_port()}"
    path = write_config(tmp_path, config)
    proc = run_snakemake(
        "--cores", "2", "--forcerun", "train", *targets, workdir=tmp_path, configfile=path
    )
    out = proc.stdout + proc.stderr
    assert "rule train:" in out and "rule fit_attack:" in out
    assert "rule fetch_weights:" not in out
    assert (
        "loaded" in (tmp_path / "results" / "logs" / "train" / f"{shadow.path()}.log").read_text()
    )
