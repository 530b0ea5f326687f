"""Protocol switches: where segmia's default differs from the original study's code on every model
and attack of a study (docs/protocol.md, "Deviations from the original code").

A study's ``protocol`` (config key; the config's top-level ``protocol`` is the default of every
study) sets each switch to segmia's default or to the original code's value; ``original`` /
``segmia`` set all of them. A switch away from segmia's default adds a token to the name of what
it changes, so a file's path still says what determines it, and everything a switch does not
change is shared between protocols:

| switch | segmia | original | changes | token |
|---|---|---|---|---|
| ``attacker_input`` | ``probabilities`` | ``logits`` | the Type-I/II attacks' release | ``none.logits`` |
| ``input_scale`` | ``unit`` (uint8 / 255) | ``byte`` (0-255 floats) | every model it trains | ``<variant>.byte`` |
| ``threshold`` | ``weighted`` | ``batch_mean`` | the global-loss threshold | ``global_loss.batchmean`` |

Data quirks (``prepare.*``, ``split.*``) and the min-max defence's keys are switches of their own
config sections; they are per dataset or per defence, not per study.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Switch:
    segmia: str
    original: str
    token: str
    changes: str  # "release", "model" or "attack"
    about: str


SWITCHES = {
    "attacker_input": Switch(
        "probabilities",
        "logits",
        "logits",
        "release",
        "what the Type-I/II attacks are given: the released probabilities, or the raw logits",
    ),
    "input_scale": Switch(
        "unit",
        "byte",
        "byte",
        "model",
        "the networks' input: uint8 / 255 (values in [0, 1]), or the 0-255 values as floats",
    ),
    "threshold": Switch(
        "weighted",
        "batch_mean",
        "batchmean",
        "attack",
        "the global-loss threshold: the shadow's last-epoch Dice loss weighted by batch size, or "
        "the unweighted mean of its batch losses",
    ),
}
SEGMIA = {name: s.segmia for name, s in SWITCHES.items()}
ORIGINAL = {name: s.original for name, s in SWITCHES.items()}
#: the attacks a switch that changes a release (the Type-I/II inputs; the others read
#: probabilities or losses) or an attack (the global-loss threshold) can change
CHANGED_ATTACKS = {"release": ("type1", "type2"), "attack": ("global_loss",)}


def resolve(value, default: dict | None = None) -> dict:
    """A full protocol {switch: value} from a config value: ``original``, ``segmia``, a mapping of
    some switches (the others from ``default``, else segmia's), or None (``default``)."""
    base = dict(default or SEGMIA)
    if value is None:
        return base
    if value == "original":
        return dict(ORIGINAL)
    if value == "segmia":
        return dict(SEGMIA)
    return {**base, **value}


def study_protocol(config: dict, study: dict) -> dict:
    """A study's protocol switches: its ``protocol`` over the config's top-level one."""
    return resolve(study.get("protocol"), resolve(config.get("protocol")))


def applies(switch: str, attack: str) -> bool:
    """Whether ``switch`` can change the result of ``attack`` (a model switch changes all)."""
    changes = SWITCHES[switch].changes
    return changes == "model" or attack in CHANGED_ATTACKS[changes]


def _tag(name: str, on: bool, token: str) -> str:
    return f"{name}.{token}" if on else name


def _untag(name: str, token: str) -> tuple[str, bool]:
    suffix = f".{token}"
    return (name[: -len(suffix)], True) if name.endswith(suffix) else (name, False)


def model_variant(variant: str, protocol: dict) -> str:
    """The variant name a model trained under ``protocol`` carries."""
    return _tag(variant, protocol["input_scale"] == "byte", SWITCHES["input_scale"].token)


def split_variant(name: str) -> tuple[str, dict]:
    """(the training variant's config name, the switches its name carries)."""
    base, byte = _untag(name, SWITCHES["input_scale"].token)
    return base, {"input_scale": "byte" if byte else "unit"}


def release(release_name: str, attack: str, protocol: dict) -> str:
    """The release an attack reads under ``protocol``: raw logits for Type-I/II (attacker_input
    logits) instead of the probabilities of release ``none``."""
    on = (
        protocol["attacker_input"] == "logits"
        and release_name == "none"
        and applies("attacker_input", attack)
    )
    return _tag(release_name, on, SWITCHES["attacker_input"].token)


def split_release(name: str) -> tuple[str, dict]:
    base, logits = _untag(name, SWITCHES["attacker_input"].token)
    return base, {"attacker_input": "logits" if logits else "probabilities"}


def attack(name: str, protocol: dict) -> str:
    on = protocol["threshold"] == "batch_mean" and applies("threshold", name)
    return _tag(name, on, SWITCHES["threshold"].token)


def split_attack(name: str) -> tuple[str, dict]:
    base, batch_mean = _untag(name, SWITCHES["threshold"].token)
    return base, {"threshold": "batch_mean" if batch_mean else "weighted"}


def ablation_arms(study: dict) -> list[tuple[str, dict, str]]:
    """(arm, protocol, dataset) of a protocol-ablation study: the original protocol on the study's
    dataset, then each switch turned to segmia's value alone, then every switch at once
    (``segmia``), then (``corrected_data``) the original protocol on a dataset of the same source
    with segmia's data handling."""
    dataset = study["dataset"]
    arms = [("original", dict(ORIGINAL), dataset)]
    for switch in study["switches"]:
        arms.append((switch, {**ORIGINAL, switch: SEGMIA[switch]}, dataset))
    if len(study["switches"]) > 1:
        every = {**ORIGINAL, **{s: SEGMIA[s] for s in study["switches"]}}
        arms.append(("segmia", every, dataset))
    if study.get("corrected_data"):
        arms.append(("data", dict(ORIGINAL), study["corrected_data"]))
    return arms
