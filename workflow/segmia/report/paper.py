"""The author's logged numbers (docs/protocol.md, "Reference numbers"; from
github.com/ctom2/adversarial-attacks ``outputs/``).

All are attack *accuracy* under the original protocol (mean over the last 10 of 30 attack
epochs, on the victim's MIA set; chance 0.5), so tables compare them with the reproduction's
``accuracy`` column. A study names its reference with the config key ``paper``.
"""

from __future__ import annotations

ARCHS = ("mobilenet_v2", "resnet34", "vgg11")

#: liver, no defence, N = 500: rows victim encoder, columns shadow encoder (paper tables 1-3)
LIVER_ARCHITECTURES = {
    "type1": {
        "mobilenet_v2": {"mobilenet_v2": 0.6329, "resnet34": 0.5917, "vgg11": 0.6074},
        "resnet34": {"mobilenet_v2": 0.6143, "resnet34": 0.6104, "vgg11": 0.5565},
        "vgg11": {"mobilenet_v2": 0.5457, "resnet34": 0.5152, "vgg11": 0.616},
    },
    "type2": {
        "mobilenet_v2": {"mobilenet_v2": 0.6878, "resnet34": 0.7102, "vgg11": 0.6214},
        "resnet34": {"mobilenet_v2": 0.6824, "resnet34": 0.8479, "vgg11": 0.5864},
        "vgg11": {"mobilenet_v2": 0.6704, "resnet34": 0.593, "vgg11": 0.8087},
    },
    "global_loss": {
        "mobilenet_v2": {"mobilenet_v2": 0.694, "resnet34": 0.604, "vgg11": 0.624},
        "resnet34": {"mobilenet_v2": 0.76, "resnet34": 0.806, "vgg11": 0.681},
        "vgg11": {"mobilenet_v2": 0.754, "resnet34": 0.734, "vgg11": 0.768},
    },
}

#: defences keyed by defence *type* (none = no defence), attack -> accuracy
LIVER_DEFENCES = {
    "type2": {
        "none": 0.8899,
        "argmax": 0.6615,
        "crop": 0.5523,
        "mixup": 0.7629,
        "minmax": 0.5195,
        "dp": 0.5013,
        "distillation": 0.5282,
    },
    "global_loss": {
        "none": 0.806,
        "argmax": 0.753,
        "crop": 0.503,
        "mixup": 0.585,
        "minmax": 0.606,
        "dp": 0.499,
        "distillation": 0.502,
    },
}
#: the victim's validation Dice *loss* logged with table 4 (others 0.032-0.038)
LIVER_DEFENCES_DICE_LOSS = {"none": 0.033, "crop": 0.109, "dp": 0.163}

KVASIR_DEFENCES = {
    "type1": {"none": 0.7328, "argmax": 0.5712, "crop": 0.5362, "mixup": 0.6683, "minmax": 0.4863},
    "type2": {"none": 0.9012, "argmax": 0.8495, "crop": 0.513, "mixup": 0.6382, "minmax": 0.516},
    "global_loss": {
        "none": 0.805,
        "argmax": 0.7225,
        "crop": 0.505,
        "mixup": 0.715,
        "minmax": 0.5525,
    },
}

#: cityscapes, Type-I, resnet34/resnet34, by training-set size
CITYSCAPES_TRAINING_SIZE = {"type1": {200: 0.8768, 300: 0.7292, 400: 0.6127}}

REFERENCES = {
    "liver_architectures": "paper tables 1-3 (liver, victim x shadow encoders, N = 500)",
    "liver_defences": "paper table 4 (liver defences, resnet34, Type-II and global loss)",
    "kvasir_defences": "paper table 5 (Kvasir defences, resnet34, N = 300)",
    "cityscapes_training_size": "the author's Cityscapes log (Type-I by training-set size)",
}


def architecture_grid(reference: str, attack: str) -> dict | None:
    if reference == "liver_architectures":
        return LIVER_ARCHITECTURES.get(attack)
    return None


def defence_accuracy(reference: str) -> dict[str, dict[str, float]]:
    """attack -> {defence type: accuracy} of a defences reference."""
    return {"liver_defences": LIVER_DEFENCES, "kvasir_defences": KVASIR_DEFENCES}.get(reference, {})


def size_accuracy(reference: str) -> dict[str, dict[int, float]]:
    return CITYSCAPES_TRAINING_SIZE if reference == "cityscapes_training_size" else {}
