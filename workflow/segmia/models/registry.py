"""Architecture registry: the paper's smp U-Nets and small MONAI U-Nets for CPU runs.

An architecture is a config entry (``architectures.<name>``) whose ``family`` selects a builder
here. ``private=True`` returns a model Opacus can train (see :func:`make_private_compatible`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import SegmiaError
from ..io import read_json, read_torch
from .weights import HEADS, LocalWeights, WeightsError, arch_file, load_into

FAMILIES = ("smp_unet", "monai_unet")


def build_model(
    arch: dict,
    in_channels: int,
    out_channels: int,
    private: bool = False,
    weights: LocalWeights | None = None,
    input_scale: str = "unit",
) -> nn.Module:
    """The architecture ``arch`` (a config entry) for ``in_channels`` -> ``out_channels``.

    The pipeline feeds every model uint8 images / 255; ``input_scale: byte`` (the protocol switch
    of the original code's 0-255 inputs) wraps the network in :class:`ByteInput`.

    ``weights``: the local file of the encoder's pretrained weights (``arch['encoder_weights']``;
    see :mod:`.weights`), loaded before the model is made private. Without it such an encoder is
    initialised at random: right for rebuilding a trained model whose state dict is loaded next,
    while a training job must pass it (``train_job`` checks). Nothing is ever downloaded.
    """
    family = arch["family"]
    if weights is not None and arch_file(arch) is None:
        raise WeightsError(
            f"weights {weights.path} were given, but the architecture ({family}, encoder "
            f"{arch.get('encoder')!r}, encoder_weights {arch.get('encoder_weights')!r}) starts "
            "from no pretrained weights; drop --weights."
        )
    if family == "smp_unet":
        model = _smp_unet(arch, in_channels, out_channels, weights)
    elif family == "monai_unet":
        from monai.networks.nets.unet import UNet

        model = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(arch["channels"]),
            strides=tuple(arch["strides"]),
            num_res_units=arch.get("num_res_units", 0),
            norm=arch.get("norm", "batch"),
        )
    else:  # the schema only admits FAMILIES
        raise SegmiaError(f"unknown architecture family {family!r}; known: {', '.join(FAMILIES)}")
    model = make_private_compatible(model) if private else model
    if input_scale == "byte":
        return ByteInput(model)
    if input_scale != "unit":
        raise SegmiaError(f"unknown input_scale {input_scale!r}; known: unit, byte")
    return model


class ByteInput(nn.Module):
    """A network that sees its [0, 1] input as the 0-255 floats of the original code (no
    normalisation there either): the protocol switch ``input_scale: byte``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 255.0)


#: smp's U-Net decoder channels (its first ``encoder_depth`` entries are the default)
DECODER_CHANNELS = (256, 128, 64, 32, 16)


def _smp_unet(
    arch: dict, in_channels: int, out_channels: int, weights: LocalWeights | None = None
) -> nn.Module:
    """smp's U-Net, built without downloading: with ``weights``, the encoder is built for 3 input
    channels, loads the torchvision state dict and then adapts its first convolution to
    ``in_channels`` the way smp does for pretrained encoders (``set_in_channels``)."""
    import segmentation_models_pytorch as smp

    depth = int(arch.get("encoder_depth", 5))
    decoder = tuple(arch.get("decoder_channels") or DECODER_CHANNELS[:depth])
    try:
        model = smp.Unet(
            encoder_name=arch["encoder"],
            encoder_depth=depth,
            encoder_weights=None,
            decoder_channels=decoder,
            in_channels=3 if weights is not None else in_channels,
            classes=out_channels,
        )
    except KeyError as err:
        raise SegmiaError(
            f"smp has no encoder {arch['encoder']!r} ({err}); see "
            "segmentation_models_pytorch.encoders.get_encoder_names() for the list."
        ) from None
    removed = prune_encoder(model.encoder, depth)
    if weights is not None:
        state = weights.load()
        load_into(
            model.encoder,
            state,
            weights.path,
            f"the smp encoder {arch['encoder']} (encoder_depth {depth})",
            ignore=HEADS + removed,
        )
        model.encoder.set_in_channels(in_channels, pretrained=True)
    return model


def prune_encoder(encoder: nn.Module, depth: int) -> tuple[str, ...]:
    """Delete the stages an smp encoder built with ``depth`` < 5 never runs; return their
    state-dict key prefixes.

    smp builds every stage whatever ``encoder_depth`` says; unused ones would hold random weights
    in every checkpoint, and Opacus (DP-SGD) fails on parameters that get no gradient. Known:
    smp's ResNet, MobileNetV2 and VGG encoders; others are left as they are.
    """
    from segmentation_models_pytorch.encoders.mobilenet import MobileNetV2Encoder
    from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
    from segmentation_models_pytorch.encoders.vgg import VGGEncoder

    if depth >= 5:
        return ()
    if isinstance(encoder, ResNetEncoder):  # stages: conv1, layer1, layer2, layer3, layer4
        removed = [f"layer{k}" for k in range(depth, 5)]
        for name in removed:
            delattr(encoder, name)
        return tuple(f"{name}." for name in removed)
    if isinstance(encoder, MobileNetV2Encoder | VGGEncoder):
        # the last module whose output the decoder sees (VGG's first feature is a stage's output)
        offset = depth - 1 if isinstance(encoder, MobileNetV2Encoder) else depth
        keep = encoder._out_indexes[offset] + 1
        removed = list(encoder.features._modules)[keep:]
        encoder.features = encoder.features[:keep]
        return tuple(f"features.{name}." for name in removed)
    return ()


class _OutOfPlaceBasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock without in-place operations (Opacus' hooks need that)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _OutOfPlaceBottleneck(nn.Module):
    """torchvision's ResNet Bottleneck without in-place operations."""

    def __init__(self, block: nn.Module):
        super().__init__()
        for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample"):
            setattr(self, name, getattr(block, name))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_private_compatible(model: nn.Module) -> nn.Module:
    """Make ``model`` trainable by Opacus DP-SGD.

    - BatchNorm (which mixes samples of a batch) is replaced by GroupNorm via Opacus'
      ``ModuleValidator.fix``;
    - in-place activations and the in-place residual add of torchvision's ResNet blocks
      (``out += identity``) are made out-of-place: Opacus' backward hooks fail on them with
      "Output 0 of BackwardHookFunction is a view and is being modified inplace".
    """
    from opacus.validators import ModuleValidator
    from torchvision.models.resnet import BasicBlock, Bottleneck

    model = ModuleValidator.fix(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BasicBlock):
                setattr(parent, name, _OutOfPlaceBasicBlock(child))
            elif isinstance(child, Bottleneck):
                setattr(parent, name, _OutOfPlaceBottleneck(child))
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise SegmiaError(f"model still incompatible with Opacus after fixing: {errors[:3]}")
    return model


def load_model(model_dir: str | Path, in_channels: int, out_channels: int, device: torch.device):
    """Rebuild a trained model from its directory (``spec.json`` + ``model.pt``; no pretrained
    weight file is needed: the state dict replaces the initial weights)."""
    model_dir = Path(model_dir)
    spec = read_json(model_dir / "spec.json")
    model = build_model(
        spec["arch"],
        in_channels,
        out_channels,
        private=spec.get("variant", {}).get("type") == "dp",
        input_scale=spec["training"].get("input_scale", "unit"),
    )
    model.load_state_dict(read_torch(model_dir / "model.pt"))
    return model.to(device).eval(), spec
