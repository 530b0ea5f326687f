"""Config validation: defaults, readable errors naming the key, cross-references."""

import copy

import pytest
from conftest import CONFIGS, REPO, load_yaml, run_snakemake, write_config
from segmia.config import load_config, load_config_file
from segmia.errors import ConfigError


@pytest.fixture
def tiny():
    return load_yaml(CONFIGS / "tiny.yaml")


def test_shipped_configs_are_valid():
    for path in [
        REPO / "config" / "demo.yaml",
        REPO / "config" / "config.yaml",
        CONFIGS / "tiny.yaml",
    ]:
        config = load_config_file(path)
        assert config["studies"]


def test_defaults_are_filled(tiny):
    config = load_config(tiny)
    assert config["deterministic"] is True
    assert config["attack"]["classifier"] == "small_cnn"
    assert config["studies"]["grid"]["attacks"] == ["type1", "type2", "global_loss"]
    # the dataset's training recipe = top-level recipe + schema defaults
    assert config["datasets"]["ct"]["training"]["epochs"] == 40
    assert config["datasets"]["ct"]["training"]["optimizer"] == "nadam"


def test_dataset_training_overrides_only_the_keys_it_sets(tiny):
    tiny["datasets"]["ct"]["training"] = {"lr": 0.5}
    config = load_config(tiny)
    assert config["datasets"]["ct"]["training"]["lr"] == 0.5
    assert config["datasets"]["ct"]["training"]["epochs"] == 40


def _error(config) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config)
    return str(info.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(epochz=3), ["epochz", "top level", "allowed keys", "studies"]),
        (lambda c: c["training"].update(epochs="ten"), ["training.epochs", "integer", "ten"]),
        (lambda c: c["training"].update(epochs=0), ["training.epochs", ">= 1"]),
        (
            lambda c: c["datasets"]["ct"].update(source="imagenet"),
            ["datasets.ct.source", "allowed values", "synthetic_ct"],
        ),
        (
            lambda c: c["datasets"]["ct"]["split"].update(trian_size=3),
            ["trian_size", "datasets.ct.split", "train_size"],
        ),
        (
            lambda c: c["studies"]["grid"].update(dataset="liver"),
            ["studies.grid.dataset", "liver", "ct"],
        ),
        (
            lambda c: c["studies"]["grid"].update(architectures=["tiny", "resnet99"]),
            ["studies.grid.architectures", "resnet99", "tiny"],
        ),
        (
            lambda c: c["studies"]["grid"].update(attacks=["type3"]),
            ["studies.grid.attacks.0", "type3", "global_loss"],
        ),
        (
            lambda c: c["architectures"]["tiny"].update(strides=[2]),
            ["architectures.tiny", "strides"],
        ),
        (
            lambda c: c["datasets"]["ct"]["split"].update(victim_pool=30),
            ["datasets.ct.split.victim_pool", "val_size + mia_size"],
        ),
        (lambda c: c["attack"].update(classifier="vit"), ["attack.classifier", "small_cnn"]),
        (lambda c: c.update(device="tpu"), ["device", "cuda"]),
    ],
)
def test_invalid_config_names_the_key(tiny, mutate, expected):
    config = copy.deepcopy(tiny)
    mutate(config)
    message = _error(config)
    assert message.startswith("Invalid configuration")
    for word in expected:
        assert word in message, message
    assert "\n" not in message


def test_snakemake_stops_before_any_job_with_the_message(tmp_path, tiny):
    tiny["results"] = str(tmp_path / "results")
    tiny["training"]["epochs"] = -1
    proc = run_snakemake(
        "-n", "--cores", "1", workdir=tmp_path, configfile=write_config(tmp_path, tiny), check=False
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "'training.epochs' is -1; it must be >= 1" in out
    assert "Traceback" not in out
    assert not (tmp_path / "results").exists()


def _schema_keys(node, schema, seen=None):
    """Every property name the schema defines (following $refs)."""
    seen = set() if seen is None else seen
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref and ref not in seen:
            seen.add(ref)
            yield from _schema_keys(schema["$defs"][ref.split("/")[-1]], schema, seen)
        for key, value in node.get("properties", {}).items():
            yield key
            yield from _schema_keys(value, schema, seen)
        for key in ("additionalProperties", "items", "then", "else"):
            if isinstance(node.get(key), dict):
                yield from _schema_keys(node[key], schema, seen)
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key, []):
                yield from _schema_keys(sub, schema, seen)


def test_every_config_key_is_documented():
    from segmia.config import schema

    doc = (REPO / "config" / "README.md").read_text()
    missing = sorted({k for k in _schema_keys(schema(), schema()) if f"`{k}`" not in doc})
    assert not missing, f"keys missing from config/README.md: {missing}"


@pytest.fixture
def paper():
    return load_yaml(REPO / "config" / "config.yaml")


def test_public_datasets_get_their_source_defaults(paper):
    datasets = load_config(paper)["datasets"]
    assert datasets["liver"]["prepare"]["hu_window"] == [-100, 400]
    assert datasets["liver"]["prepare"]["max_slices"] == 5000
    assert datasets["kvasir"]["prepare"] == {
        "height": 256,
        "width": 256,
        "channel_order": "rgb",
        "binarize": "half",
    }
    assert datasets["cityscapes"]["prepare"]["width"] == 512
    assert datasets["cityscapes"]["prepare"]["void"] == "ignore"
    assert datasets["kvasir"]["download"]["base_url"] is None
    assert datasets["kvasir"]["download"]["retries"] == 5


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda c: c["datasets"]["kvasir"].update(prepare={"hu_window": [0, 1]}),
            ["datasets.kvasir.prepare", "hu_window", "binarize", "channel_order"],
        ),
        (
            lambda c: c["datasets"]["cityscapes"].update(prepare={"void": "zero"}),
            ["datasets.cityscapes.prepare.void", "class6"],
        ),
        (
            lambda c: c["datasets"]["kvasir"].update(
                download={"base_url": "https://bob:pw@mirror.org/kvasir"}
            ),
            ["datasets.kvasir.download.base_url", "without user name or password"],
        ),
        (
            lambda c: c["datasets"]["liver"].update(
                download={"checksums": {"Task03_Liver.tar": "md5:xyz"}}
            ),
            ["Task03_Liver.tar", "md5:<32 hex digits>"],
        ),
        (
            lambda c: c["datasets"]["liver"].update(
                download={"checksums": {"liver.zip": "md5:" + "0" * 32}}
            ),
            ["download.checksums", "liver.zip", "Task03_Liver.tar"],
        ),
        (
            lambda c: c["datasets"]["liver"].update(prepare={"hu_window": [400, -100]}),
            ["datasets.liver.prepare.hu_window", "low < high"],
        ),
        (
            lambda c: c["datasets"]["liver"].update(synthetic={"groups": 3}),
            ["datasets.liver.synthetic", "only synthetic sources"],
        ),
        (
            lambda c: (
                c["datasets"]["liver"]["prepare"].update(max_slices=4000)
                if "prepare" in c["datasets"]["liver"]
                else c["datasets"]["liver"].update(prepare={"max_slices": 4000})
            ),
            ["max_slices", "5000", "4000"],
        ),
        (
            lambda c: c["datasets"].update(
                liver_small={**c["datasets"]["liver"], "download": {"retries": 1}}
            ),
            ["'liver'", "'liver_small'", "download"],
        ),
    ],
)
def test_invalid_public_dataset_config_names_the_key(paper, mutate, expected):
    mutate(paper)
    message = _error(paper)
    for word in expected:
        assert word in message, message
    assert "\n" not in message


def test_download_and_prepare_do_not_apply_to_synthetic_sources(tiny):
    tiny["datasets"]["ct"]["prepare"] = {"height": 32}
    assert "only public datasets" in _error(tiny)


# --- named choices: one constant each, the schema's enums agree --------------------------------


def test_schema_enums_are_the_constants_the_code_uses():
    from segmia.attacks.names import ATTACKS
    from segmia.config import DEVICES, PUBLIC_SOURCES, SYNTHETIC_SOURCES, schema
    from segmia.data.names import GROUPINGS
    from segmia.models.poisoning import TARGETS, TRIGGERS
    from segmia.plan import STUDY_FIGURES

    defs = schema()["$defs"]
    study = defs["study"]["properties"]
    assert tuple(defs["split"]["properties"]["groups"]["enum"]) == GROUPINGS
    assert defs["split"]["properties"]["groups"]["default"] == "whole"
    assert tuple(study["triggers"]["items"]["enum"]) == TRIGGERS
    assert tuple(study["target"]["enum"]) == TARGETS
    assert tuple(defs["dataset"]["properties"]["source"]["enum"]) == (
        *SYNTHETIC_SOURCES,
        *PUBLIC_SOURCES,
    )
    assert tuple(schema()["properties"]["device"]["enum"]) == DEVICES
    assert set(defs["attack"]["enum"]) == set(ATTACKS)
    assert set(study["type"]["enum"]) == set(STUDY_FIGURES)


# --- the split's membership unit and its feasibility, before any job ----------------------------


def test_group_aware_is_an_unknown_key_whose_message_names_groups(tiny):
    tiny["datasets"]["ct"]["split"]["group_aware"] = False
    message = _error(tiny)
    for word in ["'group_aware'", "datasets.ct.split", "'groups' replaces", "none", "pools"]:
        assert word in message, message
    assert "\n" not in message


def test_paper_config_splits_fit_and_whole_cities_do_not(paper):
    from segmia.config import training_needs

    config = load_config(copy.deepcopy(paper))
    assert config["datasets"]["cityscapes"]["split"]["groups"] == "pools"
    assert config["datasets"]["liver"]["split"]["groups"] == "whole"
    assert config["datasets"]["kvasir"]["split"]["groups"] == "whole"
    assert training_needs(config, "cityscapes") == {"victim": 600, "shadow": 600}
    # liver_original: a distilled victim (its reference set beyond N = 500); kvasir: N = 300
    assert training_needs(config, "liver_original") == {"victim": 501, "shadow": 500}
    assert training_needs(config, "liver") == {"victim": 500, "shadow": 500}
    assert training_needs(config, "kvasir") == {"victim": 300, "shadow": 300}
    # the original code's layouts fit too: slices at random, Cityscapes in order
    assert config["datasets"]["liver_original"]["split"]["groups"] == "none"
    assert config["datasets"]["cityscapes_original"]["split"]["groups"] == "ordered"
    del paper["datasets"]["cityscapes"]["split"]["groups"]
    message = _error(paper)
    for word in [
        "dataset 'cityscapes'",
        "seed 0",
        "victim pool",
        "role train",
        "needs 600",
        "has 466",
        "split.groups: pools",
        "18 cities",
        "no job was started",
    ]:
        assert word in message, message
    assert "\n" not in message


def test_reference_filler_counts_for_the_attackers_pool(tiny):
    from segmia.config import training_needs

    tiny["studies"]["refs"] = {
        "type": "attack_comparison",
        "dataset": "ct",
        "architecture": "tiny",
        "attacks": ["lira_online"],
        "train_size": 24,
    }
    tiny["datasets"]["ct"]["split"].update(mia_size=4, val_size=4)
    config = load_config(tiny)
    # the universe is 2N: 2 x 4 victim targets + 40 attacker-pool fillers
    assert training_needs(config, "ct") == {"victim": 24, "shadow": 40}


def _liver_config(tmp_path, tiny, groups=None) -> dict:
    """tiny with a liver dataset, whose slices are known only once prepared."""
    split = dict(victim_pool=20, shadow_pool=20, train_size=8, val_size=4, mia_size=4)
    tiny["datasets"] = {"liv": {"source": "liver", "split": {**split, **(groups or {})}}}
    tiny["studies"]["grid"]["dataset"] = "liv"
    tiny["results"] = str(tmp_path / "results")
    tiny["resources"] = str(tmp_path / "resources")
    return tiny


def _prepare_index(tmp_path, meta: dict) -> None:
    import json

    # 5 patients of 10 slices: whole patients per role leave the cut tails unused
    prepared = tmp_path / "resources" / "prepared" / "liv"
    prepared.mkdir(parents=True)
    rows = [f"p{g}_s{s},p{g}" for g in range(5) for s in range(10)]
    (prepared / "index.csv").write_text("sample_id,group\n" + "\n".join(rows) + "\n")
    (prepared / "meta.json").write_text(json.dumps(meta))


def test_prepared_index_on_disk_rejects_an_infeasible_split_before_any_job(tmp_path, tiny):
    config = _liver_config(tmp_path, tiny)
    load_config(copy.deepcopy(config))  # not prepared: liver's slices are unknown, not checked
    _prepare_index(tmp_path, {"name": "liv", "source": "liver"})
    message = _error(copy.deepcopy(config))
    for word in ["dataset 'liv'", "seed 0", "victim pool", "needs", "has 0", "prepared index"]:
        assert word in message, message
    # the same data with groups whole only between the pools fit
    load_config(_liver_config(tmp_path, copy.deepcopy(tiny), {"groups": "pools"}))
    proc = run_snakemake(
        "-n",
        "--cores",
        "1",
        workdir=tmp_path,
        configfile=write_config(tmp_path, config),
        check=False,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "dataset 'liv', seed 0: the victim pool" in out, out[-3000:]
    assert "Traceback" not in out
    assert not (tmp_path / "results").exists()


def test_a_prepared_index_of_other_settings_is_not_used(tmp_path, tiny):
    config = _liver_config(tmp_path, tiny)
    _prepare_index(tmp_path, {"name": "liv", "source": "liver", "prepare": {"max_slices": 40}})
    load_config(config)  # preparation would rebuild it (max_slices 5000): not checked


def test_a_poisoning_trigger_as_large_as_the_image_is_refused():
    """At 16 x 16 the study's 16-pixel trigger fills the image: square and line are one trigger."""
    config = load_yaml(REPO / "config" / "config.yaml")
    config["datasets"]["liver"]["prepare"] = {"height": 16, "width": 16}
    with pytest.raises(ConfigError, match=r"trigger_size' is 16 pixels.*16x16.*whole image"):
        load_config(config)
    config["studies"]["poisoning_liver"]["trigger_size"] = 1
    load_config(config)
