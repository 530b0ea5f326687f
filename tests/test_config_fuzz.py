"""Config validation under random mutation (hypothesis) and the gaps of test_config.py.

Property: whatever a user does to a valid config (delete or rename keys, change types, push numbers
out of range, misspell names), ``load_config`` either accepts it (and the DAG can then be planned
from it) or raises ``ConfigError`` with one paragraph naming a key; never another exception.
"""

from __future__ import annotations

import copy
import math
import os
import re

import pytest
from conftest import CONFIGS, REPO, load_yaml, run_snakemake, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segmia import plan
from segmia.config import load_config, schema
from segmia.errors import ConfigError

BASES = {
    "tiny": load_yaml(CONFIGS / "tiny.yaml"),
    "demo": load_yaml(REPO / "config" / "demo.yaml"),
    "paper": load_yaml(REPO / "config" / "config.yaml"),
}
#: SEGMIA_FUZZ_EXAMPLES=5000 explores further (random); the default run is derandomized
EXAMPLES = int(os.environ.get("SEGMIA_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="SEGMIA_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _schema_keys() -> set[str]:
    keys: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            keys.update(k for k in node.get("properties", {}) if isinstance(k, str))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema())
    return keys


SCHEMA_KEYS = _schema_keys()


def _locations(node, path=()):
    """(path, value) of every dict entry and list item below the root."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key), value
            yield from _locations(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*path, i), value
            yield from _locations(value, (*path, i))


def _parent(config, path):
    node = config
    for part in path[:-1]:
        node = node[part]
    return node


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 300), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
BAD_NUMBERS = st.one_of(
    st.sampled_from([-1, 0, -0.5, 0.5, 1.5, 255, 256, 10**9, 10**20, -(10**20), 1e300]),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6),
)
NAMES = st.one_of(
    st.sampled_from(["none", "unknown", "tiny2", "resnet99", "type3", "cuda:0", "", "1abc", "a b"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,8}", fullmatch=True),
    st.text(max_size=10),
)
NEW_KEYS = st.one_of(
    st.sampled_from(["epochz", "trian_size", "none", "type", "seed", "Seeds", ""]),
    st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
    st.integers(-5, 5),
)


@st.composite
def mutated(draw):
    """A base config with one to three random mutations (and what was done, for the report)."""
    name = draw(st.sampled_from(sorted(BASES)))
    config = copy.deepcopy(BASES[name])
    done = [name]
    for _ in range(draw(st.integers(1, 3))):
        locations = list(_locations(config))
        if not locations:
            break
        op = draw(st.sampled_from(["delete", "rename", "retype", "number", "name"]))
        if op == "number":
            locations = [
                (p, v)
                for p, v in locations
                if isinstance(v, int | float) and not isinstance(v, bool)
            ] or locations
        elif op == "name":
            locations = [(p, v) for p, v in locations if isinstance(v, str)] or locations
        elif op in ("delete", "rename"):
            locations = [(p, v) for p, v in locations if isinstance(_parent(config, p), dict)]
            if not locations:
                continue
        path, _ = draw(st.sampled_from(locations))
        parent, key = _parent(config, path), path[-1]
        if op == "delete":
            if isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
        elif op == "rename":
            new = draw(NEW_KEYS)
            parent[new] = parent.pop(key)
        elif op == "retype":
            parent[key] = draw(ANY_VALUE)
        elif op == "number":
            parent[key] = draw(BAD_NUMBERS)
        else:
            parent[key] = draw(NAMES)
        done.append(f"{op} {'.'.join(map(str, path))}")
    return config, done


def _names_a_key(message: str, config) -> bool:
    """The message quotes a key (a dotted path or name the schema or the config defines)."""
    known = SCHEMA_KEYS | {str(p[-1]) for p, _ in _locations(config) if isinstance(p[-1], str)}
    for quoted in re.findall(r"'([^'\s]+)'", message):
        if any(part in known for part in quoted.split(".")):
            return True
    return "at the top level" in message  # unknown top-level key (e.g. an integer): allowed listed


def check_property(config) -> str | None:
    """None if the config is valid (and can be planned), else the ConfigError message."""
    try:
        resolved = load_config(config)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message.strip(), message
        assert message.startswith(("Invalid configuration", "No configuration given")), message
        assert _names_a_key(message, config) or message.startswith("No configuration"), message
        return message
    # the Snakefile plans the DAG from it at once: that must not fail either
    plan.all_models(resolved)
    plan.all_evaluations(resolved)
    for name in resolved["studies"]:
        plan.study_tables(resolved, name)
        plan.study_figures(resolved, name)
    return None


@FUZZ
@given(mutated())
def test_mutated_configs_validate_or_raise_config_error(case):
    config, done = case
    try:
        check_property(config)
    except ConfigError:
        raise
    except AssertionError:
        raise
    except Exception as err:  # pragma: no cover - the point of the test
        pytest.fail(f"{type(err).__name__}: {err} after {done}")


# --- deterministic cases the fuzzer found, and gaps of test_config.py ------------------------------


def _message(config) -> str:
    message = check_property(config)
    assert message is not None, "expected the config to be refused"
    return message


@pytest.fixture
def demo():
    return copy.deepcopy(BASES["demo"])


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # a whole section of the wrong type
        (lambda c: c.update(datasets=["ct"]), ["'datasets'", "object"]),
        (lambda c: c.update(studies=None), ["'studies'", "object"]),
        # names that are not strings
        (lambda c: c["datasets"].update({1: c["datasets"]["synthetic_ct"]}), ["1", "'datasets'"]),
        (lambda c: c["architectures"].update({2.5: {"family": "monai_unet"}}), ["'architectures'"]),
        # integral floats where an integer is needed (would crash range() in a job)
        (lambda c: c["training"].update(epochs=3.0), ["'training.epochs'", "integer", "3.0"]),
        (lambda c: c.update(seeds=[0.0]), ["'seeds.0'", "integer"]),
        # not-a-number and infinity pass every numeric bound unless refused
        (lambda c: c["training"].update(lr=math.nan), ["'training.lr'", "finite number"]),
        (lambda c: c["attack"].update(lr=math.inf), ["'attack.lr'", "finite number"]),
        (
            lambda c: c["defences"]["noise"].update(sigma=-math.inf),
            ["'defences.noise.sigma'", "finite number"],
        ),
        # unknown names per kind
        (
            lambda c: c["studies"]["defences_ct"].update(defences=["none", "armax"]),
            ["'studies.defences_ct.defences'", "'armax'", "argmax", "none"],
        ),
        (
            lambda c: c["defences"].update(bad={"type": "dropout"}),
            ["'defences.bad.type'", "'dropout'", "argmax", "distillation"],
        ),
        (
            lambda c: c["studies"]["dp_sweep_ct"].update(defence="noise"),
            ["'studies.dp_sweep_ct.defence'", "'noise'", "type dp", "dp"],
        ),
        (
            lambda c: c["architectures"]["unet_small"].update(family="vit"),
            ["'architectures.unet_small.family'", "'vit'", "smp_unet", "monai_unet"],
        ),
        (
            lambda c: c["studies"]["poisoning_ct"].update(triggers=["circle"]),
            ["'studies.poisoning_ct.triggers.0'", "'circle'", "square", "line"],
        ),
        (
            lambda c: c["studies"]["architectures_ct"].update(type="grid"),
            ["'studies.architectures_ct.type'", "'grid'", "architectures", "dp_sweep"],
        ),
        (
            lambda c: c["studies"]["architectures_scenes"].update(attacks=["lira_online"]),
            ["'studies.architectures_scenes.attacks'", "lira_online", "attack_comparison"],
        ),
        # a study referring to a missing dataset, for every study type
        *[
            (
                lambda c, s=s: c["studies"][s].update(dataset="liver"),
                [f"'studies.{s}.dataset'", "'liver'", "synthetic_ct", "synthetic_scenes"],
            )
            for s in (
                "architectures_ct",
                "defences_ct",
                "dp_sweep_ct",
                "poisoning_ct",
                "attack_comparison_ct",
            )
        ],
        # out-of-range numbers
        (lambda c: c.update(seeds=[-1]), ["'seeds.0'", ">= 0"]),
        (lambda c: c.update(threads=0), ["'threads'", ">= 1"]),
        (
            lambda c: c["studies"]["poisoning_ct"].update(rates=[1.5]),
            ["'studies.poisoning_ct.rates.0'", "<= 1"],
        ),
        (
            lambda c: c["studies"]["poisoning_ct"].update(trigger_value=256),
            ["'studies.poisoning_ct.trigger_value'", "<= 255"],
        ),
        (lambda c: c["plots"].update(roc_min_fpr=1), ["'plots.roc_min_fpr'", "< 1"]),
        # missing required keys
        (lambda c: c.pop("studies"), ["top level", "'studies'", "required"]),
        (
            lambda c: c["datasets"]["synthetic_ct"].pop("split"),
            ["'datasets.synthetic_ct'", "split"],
        ),
        (lambda c: c["defences"]["dp"].pop("type"), ["'defences.dp'", "type"]),
    ],
)
def test_invalid_demo_config_names_the_key_and_the_allowed_values(demo, mutate, expected):
    if "plots" not in demo:
        demo["plots"] = {}
    mutate(demo)
    message = _message(demo)
    for words in expected:
        assert words in message, message


# --- through Snakemake: no traceback ---------------------------------------------------------------

MUTATIONS = {
    "unknown_top_key": (lambda c: c.update(epochz=3), "'epochz'"),
    "datasets_as_list": (lambda c: c.update(datasets=["ct"]), "'datasets' must be of type object"),
    "integral_float": (lambda c: c["training"].update(epochs=2.0), "'training.epochs'"),
    "missing_dataset": (
        lambda c: c["studies"]["grid"].update(dataset="kvasir"),
        "'studies.grid.dataset' is 'kvasir'",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_snakemake_dry_run_shows_the_message_without_a_traceback(tmp_path, name):
    config = load_yaml(CONFIGS / "tiny.yaml")
    config["results"] = str(tmp_path / "results")
    config["resources"] = str(tmp_path / "resources")
    mutate, expected = MUTATIONS[name]
    mutate(config)
    proc = run_snakemake(
        "-n",
        "--cores",
        "1",
        workdir=tmp_path,
        configfile=write_config(tmp_path, config),
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and 'File "' not in out, out
    lines = [line for line in out.splitlines() if line.startswith("segmia: ")]
    assert len(lines) == 1 and expected in lines[0], out
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_command_line_overrides_are_read_like_the_config_file():
    """``snakemake --config seeds=[1]`` gives ['1'] (YAML's BaseLoader): read as the file would."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    config = copy.deepcopy(BASES["tiny"])
    update_config(
        config, parse_config(["seeds=[1, 2]", "training={epochs: 3, lr: 1e-3, amp: false}"])
    )
    assert config["seeds"] == ["1", "2"]  # what Snakemake hands over
    resolved = load_config(config)
    assert resolved["seeds"] == [1, 2]
    assert resolved["training"]["epochs"] == 3 and resolved["training"]["lr"] == 0.001
    assert resolved["training"]["amp"] is False
    update_config(config, parse_config(["training={epochs: ten}"]))
    assert "'training.epochs' must be of type integer, got 'ten'" in _message(config)
    update_config(config, parse_config(["training={epochs: 3, lr: nan}"]))
    assert "'training.lr'" in _message(config)
