"""The action-quality classifier: a small dilated 1D CNN over [batch, frames, channels] sequences."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes the network's shape; stored in checkpoints and checked on resume."""

    in_channels: int
    num_classes: int
    hidden: int
    dropout: float

    def to_dict(self) -> dict:
        return asdict(self)


class ActionQualityNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h = spec.hidden
        # Per-channel standardisation lives in the model (set from the training split), so checkpoints
        # and exported models take raw joint angles, whatever their units.
        self.register_buffer("mean", torch.zeros(spec.in_channels))
        self.register_buffer("std", torch.ones(spec.in_channels))
        self.encoder = nn.Sequential(
            _block(spec.in_channels, h, dilation=1),
            _block(h, h, dilation=2),
            _block(h, h, dilation=4),
        )
        self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(2 * h, spec.num_classes))

    def set_normalization(self, x: torch.Tensor) -> None:
        """Standardise inputs with the per-channel statistics of `x` [N, T, C]."""
        self.mean.copy_(x.mean(dim=(0, 1)))
        self.std.copy_(x.std(dim=(0, 1)).clamp_min(1e-6))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Sequence embedding [B, 2*hidden] (mean and max over time); the SVM stage's input."""
        x = (x - self.mean) / self.std  # [B, T, C]
        h = self.encoder(x.transpose(1, 2))  # [B, H, T]
        return torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)  # [B, 2H]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # [B, num_classes] logits


def _block(c_in: int, c_out: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel_size=5, padding=2 * dilation, dilation=dilation),
        nn.BatchNorm1d(c_out),
        nn.ReLU(),
    )


def build_model(spec: ModelSpec) -> ActionQualityNet:
    return ActionQualityNet(spec)


@torch.inference_mode()
def embed(model: ActionQualityNet, x: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 2*hidden], logits [N, num_classes]) of raw sequences `x` [N, T, C], in eval mode."""
    model.eval()
    features, logits = [], []
    for start in range(0, len(x), batch_size):
        f = model.features(torch.from_numpy(x[start : start + batch_size]))
        features.append(f)
        logits.append(model.head(f))
    return torch.cat(features).numpy(), torch.cat(logits).numpy()
