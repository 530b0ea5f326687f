"""Pretrained weights: every file a model can start from, with its official URL and a pinned digest.

The paper's models start from torchvision ImageNet checkpoints:

- the smp U-Net encoders (``architectures.<name>.encoder_weights: imagenet``) from the checkpoints
  that the original study's smp version loaded for them (``resnet34-333f7ec4.pth``,
  ``mobilenet_v2-b0353104.pth``, ``vgg11-bbd30ac9.pth``; smp 0.6 itself would fetch converted
  copies from the Hugging Face hub);
- the ResNet attack classifier (``attack.pretrained: true``) from torchvision's
  ``ResNet34_Weights.IMAGENET1K_V1`` / ``ResNet18_Weights.IMAGENET1K_V1``.

The Snakemake rule ``fetch_weights`` (a local rule: on a cluster it runs on the submitting machine,
which has internet) downloads each file the config needs (:func:`needed`) once into
``{resources}/weights/<file name>`` with the datasets' downloader
(:func:`segmia.data.download.fetch`: retries, resume, a ``.part`` file that gets the final name
only once verified). A file placed there by hand is verified and used. Jobs never download: they
load the local file (:func:`load_file`), verifying its digest again and refusing anything but a
plain state dict of tensors (``torch.load(weights_only=True)``).

Digests. The built-in pins (:data:`PINS`) are the *published* sha256 prefixes: the hex digits
after the last '-' of each file name, torch.hub's ``hash_prefix`` convention (what
``torch.hub.download_url_to_file(..., hash_prefix=...)`` checks). They were taken from the file
names, not computed from downloaded files. ``weights.checksums`` in the config gives a full
``sha256:<64 hex digits>`` per file instead, which must then match exactly.

Nothing here imports torch at module level: the Snakefile and the fetch step import this module.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError

log = logging.getLogger("segmia")

#: where torchvision publishes its checkpoints (``weights.base_url`` replaces it: a mirror)
BASE_URL = "https://download.pytorch.org/models"


class WeightsError(DataError):
    """A weight file is missing, damaged, a different checkpoint, or not a plain state dict."""


@dataclass(frozen=True)
class WeightFile:
    name: str  # the file name, under the base URL and under {resources}/weights/
    builder: str  # the torchvision model whose state dict the file holds
    used_by: str


FILES: dict[str, WeightFile] = {
    f.name: f
    for f in (
        WeightFile("resnet34-333f7ec4.pth", "resnet34", "the smp encoder resnet34 (imagenet)"),
        WeightFile(
            "mobilenet_v2-b0353104.pth", "mobilenet_v2", "the smp encoder mobilenet_v2 (imagenet)"
        ),
        WeightFile("vgg11-bbd30ac9.pth", "vgg11", "the smp encoder vgg11 (imagenet)"),
        WeightFile("resnet34-b627a593.pth", "resnet34", "the ResNet-34 attack classifier"),
        WeightFile("resnet18-f37072fd.pth", "resnet18", "the ResNet-18 attack classifier"),
    )
}
#: (smp encoder, encoder_weights) -> file
ENCODER_FILES = {
    ("resnet34", "imagenet"): "resnet34-333f7ec4.pth",
    ("mobilenet_v2", "imagenet"): "mobilenet_v2-b0353104.pth",
    ("vgg11", "imagenet"): "vgg11-bbd30ac9.pth",
}
#: attack classifier -> file (torchvision's IMAGENET1K_V1 weights of that ResNet)
ATTACK_FILES = {"resnet34": "resnet34-b627a593.pth", "resnet18": "resnet18-f37072fd.pth"}
#: the published sha256 prefixes (from the file names; see the module docstring)
PINS = {
    "resnet34-333f7ec4.pth": "sha256:333f7ec4",
    "mobilenet_v2-b0353104.pth": "sha256:b0353104",
    "vgg11-bbd30ac9.pth": "sha256:bbd30ac9",
    "resnet34-b627a593.pth": "sha256:b627a593",
    "resnet18-f37072fd.pth": "sha256:f37072fd",
}
#: the classification heads of the torchvision checkpoints (an smp encoder has none)
HEADS = ("fc.", "classifier.")

HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def published_prefix(name: str) -> str | None:
    """The sha256 prefix a checkpoint's file name publishes (``resnet34-333f7ec4.pth``)."""
    match = HASH_PREFIX.search(name)
    return match.group(1) if match else None


def url(name: str, base_url: str | None = None) -> str:
    return f"{(base_url or BASE_URL).rstrip('/')}/{name}"


def _known(name: str) -> WeightFile:
    if name not in FILES:
        raise WeightsError(
            f"{name!r} is not a registered weight file; the registered ones: "
            f"{', '.join(sorted(FILES))} (segmia.models.weights)."
        )
    return FILES[name]


# --- which file a model needs -----------------------------------------------------------------


def arch_file(arch: dict, name: str | None = None) -> str | None:
    """The weight file of an architecture's encoder (``architectures.<name>``), or None (random
    initialisation)."""
    weights = arch.get("encoder_weights")
    if arch.get("family") != "smp_unet" or weights is None:
        return None
    file = ENCODER_FILES.get((arch.get("encoder"), weights))
    if file is None:
        supported = ", ".join(f"{e} with {w}" for e, w in ENCODER_FILES)
        where = f"'architectures.{name}': " if name else ""
        raise ConfigError(
            f"Invalid configuration: {where}no pinned weight file for smp encoder "
            f"{arch.get('encoder')!r} with encoder_weights {weights!r}; pretrained encoders "
            f"supported: {supported}. Set encoder_weights: null, or register the file in "
            "segmia/models/weights.py."
        )
    return file


def attack_file(recipe: dict) -> str | None:
    """The weight file of the learned attacks' classifier, or None."""
    if not recipe.get("pretrained", False):
        return None
    return ATTACK_FILES.get(recipe.get("classifier"))


def inner_file(config: dict, variant: dict) -> str | None:
    """The weight file of a min-max variant's inner ResNet-34 (the original's ImageNet ResNet,
    when the attack classifiers are ``pretrained``), or None."""
    if variant.get("type") != "minmax" or variant.get("inner_classifier") != "resnet34":
        return None
    return attack_file({**config["attack"], "classifier": "resnet34"})


def check_config(config: dict) -> None:
    """Config checks: every pretrained encoder has a pinned file; checksums name known files."""
    for name, arch in config["architectures"].items():
        arch_file(arch, name)
    unknown = sorted(set(config["weights"]["checksums"]) - set(FILES))
    if unknown:
        raise ConfigError(
            f"Invalid configuration: 'weights.checksums' names {', '.join(unknown)}, which is not "
            f"a registered weight file; the registered ones: {', '.join(sorted(FILES))}."
        )


# --- digests ------------------------------------------------------------------------------------


def expected_digest(
    name: str, checksums: Mapping[str, str] | None = None
) -> tuple[tuple[str, str], str]:
    """((algorithm, hex), where it comes from) that the file ``name`` must match."""
    from ..data.download import parse_checksum

    if checksums and name in checksums:
        where = f"weights.checksums.{name}"
        return parse_checksum(checksums[name], where), f"from the config's {where}"
    _known(name)
    return (
        parse_checksum(PINS[name], prefix=True),
        "the published sha256 prefix in its file name",
    )


def digest_text(name: str, checksums: Mapping[str, str] | None = None) -> str:
    """The expected digest of ``name`` as ``sha256:<hex>`` (what a job's --weights-digest takes)."""
    (algo, value), _ = expected_digest(name, checksums)
    return f"{algo}:{value}"


def sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fix(name: str, path: Path, missing: bool = False) -> str:
    where = url(name) if name in FILES else "the official file"
    first = "Run" if missing else f"Delete {path} and rerun"
    return (
        f"{first} Snakemake on a machine with internet access (the local rule fetch_weights "
        f"downloads it), or place a good copy of {where} there by hand."
    )


def verify_file(path: str | os.PathLike, expected: tuple[str, str], why: str) -> str:
    """The file's sha256; raise :class:`WeightsError` unless it matches ``expected``."""
    from ..data.download import describe, verify

    path = Path(path)
    actual = sha256(path)
    if not verify({"sha256": actual}, expected):
        raise WeightsError(
            f"{path}: its sha256 is {actual}, but {describe(expected)} was expected ({why}): the "
            f"file is damaged, cut short or a different checkpoint. {_fix(path.name, path)} If "
            "the file is right, put its full digest under weights.checksums in the config."
        )
    return actual


# --- fetching (the fetch_weights rule) ----------------------------------------------------------


def fetch_file(dest: str | os.PathLike, params: dict | None = None) -> str:
    """Make ``dest`` (``{resources}/weights/<registered file name>``) a verified copy of its file.

    A file already there (an earlier run, or placed by hand) is verified and kept; otherwise it is
    downloaded from ``params['base_url']`` (default: torchvision's site) and gets its name only
    once verified. ``params``: the config's ``weights`` section. Returns the file's sha256.
    """
    from ..data.download import DownloadError, failure_details, fetch, policy_from

    dest, params = Path(dest), params or {}
    name = dest.name
    what = _known(name)
    expected, why = expected_digest(name, params.get("checksums"))
    if dest.exists():
        log.info("found %s; verifying it", dest)
        digest = verify_file(dest, expected, why)
        log.info("%s is verified (%s)", dest, why)
        return digest
    source = url(name, params.get("base_url"))
    try:
        digests = fetch(source, dest, expected=expected, policy=policy_from(params))
    except DownloadError as err:
        hint, kept = failure_details(err, dest, why)
        raise WeightsError(
            f"the weights of {what.used_by}: {str(err).strip().rstrip('.')}{hint}.{kept} On a "
            f"machine without internet access, download {url(name)} elsewhere and place it at "
            f"{dest} (it is verified before use), or point weights.base_url to a mirror."
        ) from None
    return digests["sha256"]


# --- loading (the jobs) -------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalWeights:
    """A local weight file and the digest it must have (None: the built-in pin of its name)."""

    path: Path
    digest: str | None = None

    def load(self):
        return load_file(self.path, self.digest)


def require(
    name: str | None,
    weights: LocalWeights | None,
    what: str,
    option: str = "--weights",
    optional: bool = False,
) -> None:
    """A training job's check that it was given exactly the weight file ``name`` (None: none)
    through the command-line ``option``; ``optional``: no file at all is allowed too."""
    if name is not None and weights is None and not optional:
        raise WeightsError(
            f"{what} starts from pretrained weights, but no weight file was given: pass {option} "
            f"<resources>/weights/{name} (the local Snakemake rule fetch_weights puts it there). "
            "Jobs never download weights."
        )
    if name is None and weights is not None:
        raise WeightsError(
            f"{option} {weights.path} was given, but {what} starts from no pretrained weights "
            f"in this config; drop {option}."
        )
    if weights is not None and Path(weights.path).name != name:
        raise WeightsError(
            f"{what} loads the weight file {name} ({FILES[name].used_by}), but {option} names "
            f"{weights.path}; pass <resources>/weights/{name}."
        )


def load_file(path: str | os.PathLike, digest: str | None = None) -> dict:
    """The state dict in ``path`` after checking its digest (``sha256:<hex>``, a full digest or a
    prefix; None: the pin of its file name). Never downloads; refuses non-plain checkpoints."""
    import torch

    from ..data.download import parse_checksum

    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"{path}: the pretrained weight file is missing. Jobs never download weights: the "
            f"local Snakemake rule fetch_weights puts it there. {_fix(path.name, path, True)}"
        )
    if digest:
        expected, why = parse_checksum(digest, "--weights-digest", prefix=True), "as given"
    else:
        expected, why = expected_digest(path.name)
    verify_file(path, expected, why)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled code, a truncated zip, not a torch file at all
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise WeightsError(
            f"{path}: not a plain PyTorch state dict (torch.load with weights_only=True refused "
            f"it: {first}). Only plain tensor checkpoints are loaded. {_fix(path.name, path)}"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"{path}: not a plain state dict (a flat mapping of parameter names to tensors, as "
            f"torch.save(model.state_dict()) writes). {_fix(path.name, path)}"
        )
    return dict(state)


def _examples(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def load_into(module, state: dict, path: str | os.PathLike, what: str, ignore=()) -> None:
    """Load ``state`` into ``module``, strictly on the keys outside the ``ignore`` prefixes.

    Keys under ``ignore`` (a classification head the model replaces, the stages an encoder built
    with fewer stages does not have) are neither required nor loaded; every other key must be in
    both, with the same shape (BatchNorm's ``num_batches_tracked``, absent from old checkpoints,
    may be missing).
    """
    import torch

    ignore = tuple(ignore)
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore)}
    body = {k: v for k, v in state.items() if not k.startswith(ignore)}
    missing = [k for k in own if k not in body and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in body if k not in own]
    shapes = [
        f"{k} {tuple(body[k].shape)} vs {tuple(own[k].shape)}"
        for k in body
        if k in own and body[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{len(missing)} missing key(s) ({_examples(missing)})" if missing else "",
            f"{len(unexpected)} unexpected key(s) ({_examples(unexpected)})" if unexpected else "",
            f"{len(shapes)} shape mismatch(es) (file vs model: {_examples(shapes)})"
            if shapes
            else "",
        ]
        path = Path(path)
        raise WeightsError(
            f"{path} does not fit {what}: {'; '.join(p for p in problems if p)}. It is not the "
            f"ImageNet checkpoint this model starts from. {_fix(path.name, path)}"
        )
    for k in own:
        if k not in body:  # num_batches_tracked of a checkpoint older than that buffer
            body[k] = torch.zeros_like(own[k])
    module.load_state_dict(body, strict=False)
    log.info("loaded %s into %s (%d tensors)", path, what, len(own))


def write_fixture(name: str, path: str | os.PathLike, seed: int = 0) -> str:
    """A stand-in for the weight file ``name``: the state dict of a randomly initialised
    torchvision model of the same architecture (a VGG without its 500 MB classifier head), for
    tests and CPU rehearsals, the same bytes for the same ``seed``. Returns its digest,
    ``sha256:<hex>`` (for ``weights.checksums``)."""
    import torch
    import torchvision

    from ..io import atomic_path

    what = _known(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, what.builder)(weights=None)
    state = model.state_dict()
    if what.builder.startswith("vgg"):
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    buffer = io.BytesIO()  # not the (random) temporary name: torch.save records it in the zip
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return f"sha256:{sha256(path)}"
