"""The ``segmia train`` step: one model, from its spec to checkpoint, log and metrics.

A model directory holds ``model.pt`` (state dict, loadable with ``weights_only=True``),
``spec.json`` (everything that determines the weights), ``history.csv`` (one row per epoch),
``metrics.json`` (final validation Dice/IoU/loss, last-epoch training loss, wall time) and
``members.csv`` (its training rows; under a ``fixed_subset`` poisoning variant also ``poisoned``,
1 for the training images poisoned in every epoch), and ``queries/mia/`` (``logits.npy``,
``samples.csv``: the model's answers on its own pool's MIA set, a reference model's on the
reference universe, the attacks' input), queried in the same job.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.names import OWN_QUERY
from ..data.prepared import load_prepared
from ..data.split import read_split, reference_training_rows, role_indices, train_indices
from ..errors import SegmiaError
from ..io import read_json, write_csv, write_json, write_torch
from ..runtime import Checkpoint, stable_seed
from .poisoning import DEFAULT_SCHEDULE
from .registry import build_model, load_model
from .train import Arrays, Extras, Recipe, Task, fit
from .variants import batch_transform, epochs_for, fixed_poison_positions, poison_samples
from .weights import LocalWeights, arch_file, require

log = logging.getLogger("segmia")


def model_seed(spec: dict) -> int:
    """Initialisation and batch-order seed of a model.

    It depends on what the model is (dataset, role, architecture, training size, seed) but not on
    its training variant, so variants of one model start from the same weights and see the same
    batch order (a poisoned model with rate 0 equals the clean one).
    """
    return stable_seed(
        spec["dataset"], spec["role"], spec["arch_name"], spec["train_size"], spec["seed"]
    )


def training_rows(split, spec: dict):
    """Rows of the model's training set: the first N training candidates of its pool, or for a
    reference model (role ``ref<k>``) its random half of the reference universe, drawn at the
    membership unit the planner put in the spec (``reference_unit``)."""
    if spec["pool"] == "reference":
        index = int(spec["role"].removeprefix("ref"))
        return reference_training_rows(
            split, spec["train_size"], spec["split"], spec["seed"], index, spec["reference_unit"]
        )
    return train_indices(split, spec["pool"], spec["train_size"])


def _extras(
    spec, data, train, val, device, *, split=None, on_device=None, inner_weights=None
) -> Extras:
    """The training variant's additions to the plain loop. Min-max: ``split`` (the split table)
    and ``on_device`` (where the data lives) build the MIA set its inner attack may train on
    (``inner_data: mia_set``); ``inner_weights``: the ImageNet file of its ResNet-34."""
    variant = spec["variant"]
    kind = variant["type"]
    extras = Extras(transform=batch_transform(variant))
    if kind == "dp":
        extras.private = {**variant, "delta": variant.get("delta") or 1.0 / len(train)}
    if kind == "minmax":
        from .minmax import MinMax, inner_mia_set, switches

        mia = None
        if switches(variant)["inner_data"] == "mia_set":
            if split is None:
                raise SegmiaError(
                    "the min-max variant trains its inner attack on the MIA set, but no split "
                    "table was given to build it."
                )
            mia = inner_mia_set(split, spec, data, on_device or device)
        extras.regulariser = MinMax(
            variant,
            train,
            val,
            data.out_channels,
            data.ignore_index,
            device,
            mia=mia,
            weights=inner_weights,
        )
    return extras


def train_job(
    *,
    data_dir: str | Path,
    split_path: str | Path,
    spec: dict,
    out_dir: str | Path,
    device: torch.device,
    teacher_dir: str | Path | None = None,
    weights: LocalWeights | None = None,
    inner_weights: LocalWeights | None = None,
) -> dict:
    """Train the model described by ``spec`` (a training variant included) into ``out_dir``;
    ``weights``: the local file of its encoder's pretrained weights (required when the
    architecture has ``encoder_weights``; never downloaded); ``inner_weights``: the ImageNet
    file of a min-max variant's ResNet-34 inner attack (``inner_classifier: resnet34``; without
    it that ResNet starts at random)."""
    out_dir = Path(out_dir)
    require(arch_file(spec["arch"]), weights, f"architecture {spec['arch_name']!r}")
    if spec["variant"]["type"] != "minmax":  # only a min-max inner attack takes them
        what = f"the variant {spec['variant_name']!r} (not min-max: no inner attack)"
        require(None, inner_weights, what, option="--inner-weights")
    data = load_prepared(data_dir, check=False)
    split = read_split(split_path)
    pool, variant = spec["pool"], spec["variant"]
    sizes = _split_sizes(spec)  # before training: the query after it needs them
    train_rows = training_rows(split, spec)
    val_rows = role_indices(split, "victim" if pool == "victim" else "shadow", "val")
    on_device = device if spec["training"].get("data_on_device", True) else torch.device("cpu")
    val = Arrays.from_numpy(data.images, data.masks, val_rows, on_device)
    train, members, extra_metrics = _training_set(
        spec, data, split, train_rows, teacher_dir, device, on_device
    )
    recipe = Recipe.from_config(spec["training"])
    recipe.epochs = epochs_for(variant, recipe.epochs)
    seed = model_seed(spec)
    poisoned = None  # training positions a fixed_subset poisoning variant poisons
    if variant["type"] == "poison" and variant.get("schedule", DEFAULT_SCHEDULE) == "fixed_subset":
        poisoned = fixed_poison_positions(len(train), variant["rate"], seed)
        train = Arrays(*poison_samples(train.images, train.masks, poisoned, variant))
        # every epoch sees every image once: the realised fraction of poisoned loads is k / N
        extra_metrics = {
            "poison_rate_realised": len(poisoned) / len(train),
            "poisoned_samples": len(poisoned),
        }
    torch.manual_seed(seed)
    model = build_model(
        spec["arch"],
        data.channels,
        data.out_channels,
        private=variant["type"] == "dp",
        weights=weights,
        input_scale=spec["training"].get("input_scale", "unit"),
    )
    log.info(
        "training %s/%s %s (%s) on %d samples (validation %d), %d epochs, device %s",
        spec["dataset"],
        spec["role"],
        spec["arch_name"],
        spec["variant_name"],
        len(train),
        len(val),
        recipe.epochs,
        device,
    )
    started = time.monotonic()
    model, rows, info = fit(
        model,
        train,
        val,
        recipe,
        Task(data.num_classes, data.ignore_index),
        seed,
        out_dir,
        spec,
        device,
        extras=_extras(
            spec,
            data,
            train,
            val,
            device,
            split=split,
            on_device=on_device,
            inner_weights=inner_weights,
        ),
        name=f"{spec['role']}/{spec['arch_name']}/{spec['variant_name']}",
    )
    seconds = sum(r["seconds"] for r in rows)
    last = rows[-1]
    metrics = {
        "dataset": spec["dataset"],
        "role": spec["role"],
        "arch": spec["arch_name"],
        "variant": spec["variant_name"],
        "variant_spec": variant,
        "input_scale": spec["training"].get("input_scale", "unit"),
        "train_size": spec["train_size"],
        "seed": spec["seed"],
        "val_dice": last["val_dice"],
        "val_iou": last["val_iou"],
        "train_loss": last["train_loss"],
        "train_loss_batch_mean": last["train_loss_batch_mean"],
        "val_loss": last["val_loss"],
        "epochs": len(rows),
        "train_seconds": seconds + extra_metrics.get("teacher_seconds", 0.0),
        "job_seconds": time.monotonic() - started,
        "device": device.type,
        **info,
        **extra_metrics,
    }
    _write_model(out_dir, spec, model, rows, metrics, split, members, poisoned)
    log.info(
        "val Dice %.4f IoU %.4f, %.1f s%s",
        metrics["val_dice"],
        metrics["val_iou"],
        seconds,
        f", spent epsilon {metrics['epsilon']:.3f}" if "epsilon" in metrics else "",
    )
    # the attacks' input, in the same process: the model's answers on its own pool's MIA set
    # (loaded back from model.pt, as any later query loads it)
    from ..attacks.outputs import query_job

    query_job(
        model_dir=out_dir,
        data_dir=data_dir,
        split_path=split_path,
        pool=pool,
        train_size=spec["train_size"],
        sizes=sizes,
        out_dir=out_dir / "queries" / OWN_QUERY,
        device=device,
    )
    # the epoch checkpoint goes once every output is written: a failed query resumes after the
    # last epoch instead of training again
    Checkpoint(out_dir, spec).clear()
    return metrics


def _split_sizes(spec: dict) -> dict:
    """The dataset's split sizes a model spec carries (its MIA set, the reference universe)."""
    if "split" not in spec:
        raise SegmiaError(
            f"the model spec of {spec.get('dataset', '')!r}/{spec.get('role', '')!r} has no "
            "'split' (the dataset's split sizes, which define the MIA set the training job "
            "queries the model on). The planner adds it to every model spec: re-run Snakemake "
            "with the current workflow, or add the dataset's 'split' section to the spec passed "
            "to 'segmia train'."
        )
    return spec["split"]


def _training_set(
    spec: dict, data, split, train_rows, teacher_dir, device, on_device
) -> tuple[Arrays, np.ndarray, dict]:
    """(training arrays, the rows that are members, extra metrics): the split's training rows,
    or under distillation the teacher-labelled reference set it keeps."""
    variant = spec["variant"]
    if variant["type"] != "distillation":
        return Arrays.from_numpy(data.images, data.masks, train_rows, on_device), train_rows, {}
    from .distill import distillation_set

    if teacher_dir is None:
        raise SegmiaError(
            "the distillation variant needs --teacher (the undefended victim's model directory)"
        )
    teacher, _ = load_model(teacher_dir, data.channels, data.out_channels, device)
    teacher_metrics = read_json(Path(teacher_dir) / "metrics.json")
    images, labels, rows = distillation_set(
        split,
        spec["pool"],
        spec["train_size"],
        variant,
        data,
        teacher,
        teacher_metrics["val_loss"],
        data.ignore_index,
        device,
    )
    extra = {
        "distillation_reference_size": int(variant["reference_size"]),
        "distillation_kept": len(rows),
        "teacher_seconds": teacher_metrics["train_seconds"],
    }
    return Arrays(images.to(on_device), labels.to(on_device)), rows, extra


def _write_model(out_dir: Path, spec, model, rows, metrics, split, members, poisoned) -> None:
    """The model's files (its query follows)."""
    write_torch(out_dir / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    write_json(out_dir / "spec.json", spec)
    table = pd.DataFrame({"row": members, "sample_id": split.loc[members, "sample_id"].to_numpy()})
    if poisoned is not None:  # which members the fixed_subset schedule poisoned (1) or not (0)
        table["poisoned"] = np.isin(np.arange(len(members)), poisoned).astype(int)
    write_csv(out_dir / "members.csv", table)
    write_csv(out_dir / "history.csv", pd.DataFrame(rows))
    write_json(out_dir / "metrics.json", metrics)
