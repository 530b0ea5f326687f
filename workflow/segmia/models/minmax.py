"""Min-max adversarial regularisation (Nasr et al. 2018), as in the study.

Every epoch an inner Type-II attack (a small CNN on the released map concatenated with the true
mask) is trained for one pass on the model's outputs for its training samples (members) against
held-out samples of the defender (non-members); the segmentation loss is then regularised by
``lambda`` x the attack's mean membership probability on the training batch, so the model learns
to make its members look like non-members.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks.classifier import SmallCNN
from ..attacks.features import attack_features
from ..models.losses import probabilities


class MinMax:
    def __init__(
        self,
        spec: dict,
        members,
        heldout,
        out_channels: int,
        ignore_index: int | None,
        device: torch.device,
    ):
        self.lam = float(spec["lambda"])
        self.batch_size = int(spec.get("attack_batch_size", 16))
        self.members, self.heldout = members, heldout
        self.ignore_index, self.device = ignore_index, device
        self.attack = SmallCNN(2 * out_channels, int(spec.get("attack_width", 16))).to(device)
        self.optimizer = torch.optim.NAdam(
            self.attack.parameters(), lr=float(spec.get("attack_lr", 1e-3))
        )
        self.loss = nn.BCEWithLogitsLoss()
        self.last_epoch: dict[str, float] = {}

    def _features(self, model, data, idx) -> torch.Tensor:
        x, y = data.batch(idx, self.device)
        with torch.no_grad():
            probs = probabilities(model(x).float())
        return attack_features("type2", probs, y, self.ignore_index)

    def on_epoch_start(self, model: nn.Module, gen: torch.Generator) -> None:
        """One pass of the inner attack over a balanced sample of members and held-out data."""
        model.eval()
        self.attack.train()
        k = min(len(self.members), len(self.heldout))
        members = torch.randperm(len(self.members), generator=gen)[:k]
        heldout = torch.randperm(len(self.heldout), generator=gen)[:k]
        total, correct = 0.0, 0
        half = max(1, self.batch_size // 2)
        for start in range(0, k, half):
            m, h = members[start : start + half], heldout[start : start + half]
            x = torch.cat(
                [self._features(model, self.members, m), self._features(model, self.heldout, h)]
            )
            y = torch.cat([torch.ones(len(m)), torch.zeros(len(h))]).to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            out = self.attack(x)
            loss = self.loss(out, y)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(y)
            correct += int(((out.detach() > 0).float() == y).sum())
        self.last_epoch = {
            "minmax_attack_loss": total / max(2 * k, 1),
            "minmax_attack_accuracy": correct / max(2 * k, 1),
        }
        self.attack.eval()
        model.train()

    def penalty(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """lambda x the (frozen) attack's mean membership probability on this training batch."""
        features = attack_features("type2", probabilities(logits), y, self.ignore_index)
        for p in self.attack.parameters():
            p.requires_grad_(False)
        score = torch.sigmoid(self.attack(features)).mean()
        for p in self.attack.parameters():
            p.requires_grad_(True)
        return self.lam * score

    def state_dict(self) -> dict:
        return {
            "attack": self.attack.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.attack.load_state_dict(state["attack"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.last_epoch = dict(state["last_epoch"])
