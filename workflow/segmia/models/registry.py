"""Architecture registry: the paper's smp U-Nets and small MONAI U-Nets for CPU runs.

An architecture is a config entry (``architectures.<name>``) whose ``family`` selects a builder
here. ``private=True`` returns a model Opacus can train (see :func:`make_private_compatible`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SegmiaError

FAMILIES = ("smp_unet", "monai_unet")


def build_model(
    arch: dict, in_channels: int, out_channels: int, private: bool = False
) -> nn.Module:
    family = arch["family"]
    if family == "smp_unet":
        model = _smp_unet(arch, in_channels, out_channels)
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
    return make_private_compatible(model) if private else model


def _smp_unet(arch: dict, in_channels: int, out_channels: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    weights = arch.get("encoder_weights")
    try:
        return smp.Unet(
            encoder_name=arch["encoder"],
            encoder_weights=weights,
            in_channels=in_channels,
            classes=out_channels,
        )
    except KeyError as err:
        raise SegmiaError(
            f"smp has no encoder {arch['encoder']!r} ({err}); see "
            "segmentation_models_pytorch.encoders.get_encoder_names() for the list."
        ) from None
    except (OSError, RuntimeError, ValueError) as err:
        if weights is None:
            raise
        raise SegmiaError(
            f"could not load the {weights!r} weights of encoder {arch['encoder']!r} "
            f"({str(err).splitlines()[0][:200]}). Pretrained weights are downloaded on first use: "
            "run once on a machine with internet access (they are cached under $TORCH_HOME or "
            "$HF_HOME), or set encoder_weights: null in the architecture's config."
        ) from None


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
