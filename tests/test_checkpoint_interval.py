"""How often a training keeps its last finished epoch: at most once a minute by default (and the
last epoch always), every epoch with SEGMIA_CHECKPOINT_SECONDS=0."""

import numpy as np
import pytest
import torch
from segmia.errors import SegmiaError
from segmia.models.registry import build_model
from segmia.models.train import Arrays, Recipe, Task, fit
from segmia.runtime import Checkpoint

TINY = {"family": "monai_unet", "channels": [4, 8], "strides": [2]}


def _kept_epochs(tmp_path, monkeypatch) -> list[int]:
    kept = []
    save = Checkpoint.save
    monkeypatch.setattr(
        Checkpoint, "save", lambda self, state: (kept.append(state["epoch"]), save(self, state))
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 1, 16, 16), dtype=np.uint8)
    masks = (rng.random((8, 16, 16)) > 0.5).astype(np.uint8)
    data = Arrays.from_numpy(images, masks, np.arange(8), torch.device("cpu"))
    recipe = Recipe(epochs=4, batch_size=4, lr=1e-3)
    model = build_model(TINY, 1, 1)
    fit(model, data, data, recipe, Task(2, None), 0, tmp_path, {}, torch.device("cpu"))
    return kept


def test_by_default_a_short_training_keeps_only_its_last_epoch(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGMIA_CHECKPOINT_SECONDS")
    assert _kept_epochs(tmp_path, monkeypatch) == [3]


def test_with_zero_seconds_every_epoch_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMIA_CHECKPOINT_SECONDS", "0")
    assert _kept_epochs(tmp_path, monkeypatch) == [0, 1, 2, 3]


@pytest.mark.parametrize("value", ["soon", "-5"])
def test_an_invalid_interval_is_a_clear_error(tmp_path, monkeypatch, value):
    monkeypatch.setenv("SEGMIA_CHECKPOINT_SECONDS", value)
    with pytest.raises(SegmiaError, match="SEGMIA_CHECKPOINT_SECONDS.*seconds >= 0"):
        Checkpoint(tmp_path, {})
