"""The action-quality classifier: a small dilated 1D CNN over [batch, frames, channels] sequences.

Variable-length recordings. A split holds x [N, T_max, C] where a sequence shorter than T_max ends in
NaN frames (the UCR / tslearn padding convention), so its real length is the number of frames up to its
last frame with any non-NaN value (`lengths_of`). A batch is cut to its own longest sequence
(`crop_batch`) and the network gets the batch's `lengths` [B]: every layer then computes on real frames
only (masked), so a sequence's output does not depend on how much padding shares its batch. A batch
with no padding passes `lengths=None` and takes the plain, unmasked path: fixed-length data costs
nothing extra and trains exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from aqtrack.data.dataset import lengths_of


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes the network's shape; stored in checkpoints and checked on resume."""

    in_channels: int
    num_classes: int
    hidden: int
    dropout: float

    def to_dict(self) -> dict:
        return asdict(self)


def trailing_lengths(x: torch.Tensor) -> torch.Tensor:
    """`lengths_of` on a tensor [B, T, C] -> int64 [B], with no host sync (it runs inside an exported
    graph too)."""
    real = ~torch.isnan(x).all(dim=2)  # [B, T]
    frame = torch.arange(1, x.shape[1] + 1, device=x.device)  # 1-based frame numbers
    return (real * frame).amax(dim=1)


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """bool [B, frames]: True on each sequence's real frames (the first `lengths[b]`)."""
    return torch.arange(frames, device=lengths.device) < lengths[:, None]


def crop_batch(
    x: torch.Tensor, lengths: np.ndarray | None, idx: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sequences `idx` of x [N, T, C], cut to the longest real length among them: [B, T_b, C], and
    their lengths int64 [B], or None when none of them is padded (then every one fills T_b). Decided on
    the host from the numpy `lengths` (None: all N fill T), so building a batch costs no device sync."""
    if lengths is None or len(idx) == 0:
        return x[idx], None
    own = lengths[idx]
    longest = int(own.max())
    if (own == longest).all():
        return x[idx, :longest], None
    return x[idx, :longest], torch.from_numpy(own)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics can leave out padded frames.

    `forward(x, mask)` with x [B, C, T] and mask bool [B, T] (True on real frames): the batch mean and
    (biased) variance are those of the real frames only, and the running statistics move the way
    BatchNorm1d moves them, with the unbiased variance of the real count. Without a mask, or in eval
    mode (the running statistics apply frame by frame), it is BatchNorm1d itself. Same parameters,
    buffers and state-dict keys as BatchNorm1d, so checkpoints do not see the difference.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or not (self.training or self.running_mean is None):
            return super().forward(x)
        # Statistics in float32 even under autocast (fp16 sums of squares lose too much). Frames past
        # the end are finite (convolutions of zeros), so a 0/1 mask multiplies them out: on CPU that is
        # several times faster than torch.where.
        x32, keep = x.float(), mask[:, None, :].float()  # [B, C, T], [B, 1, T]
        count = keep.sum()
        mean = (x32 * keep).sum(dim=(0, 2)) / count  # [C]
        centred = (x32 - mean[:, None]) * keep  # padded frames add exact zeros
        var = centred.square().sum(dim=(0, 2)) / count  # biased: what normalises the batch
        if self.training and self.track_running_stats:
            self.update_running_stats(mean, var, count)
        return self.normalize(x, mean, var)

    @torch.no_grad()
    def update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """As BatchNorm1d: an exponential (or, with momentum None, cumulative) average of the batch mean
        and the unbiased batch variance, here over the `count` real frames."""
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * count / (count - 1).clamp_min(1)
        self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)

    def normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """x [B, C, ...] standardised with per-channel `mean`, `var` [C], then the affine transform."""
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale + (self.bias if self.bias is not None else 0)
        shape = (1, -1, *[1] * (x.dim() - 2))
        return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)


class _Block(nn.Sequential):
    """Conv1d -> BatchNorm -> ReLU over [B, C, T]; a Sequential so state-dict keys stay `<i>.<j>.*`.

    With a mask (bool [B, T], True on real frames) its input must be zero past each sequence's end
    (the network zeroes x once, each block its own output): the convolution's outputs at real frames
    then see exactly what an unpadded sequence sees through the conv's own zero padding. Its outputs
    past the end are left out of the batch statistics and zeroed for the next block."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        conv, norm, act = self
        if mask is None:
            return act(norm(conv(x)))
        keep = mask[:, None, :].to(x.dtype)  # [B, 1, T]: 1 on real frames, 0 past the end
        return act(norm(conv(x), mask)) * keep


class ActionQualityNet(nn.Module):
    """x [B, T, C] raw joint angles (and optionally lengths [B]) -> logits [B, num_classes]."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
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

    def set_normalization(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """Standardise inputs with the per-channel mean and std of the real frames of x [N, T, C] (the
        training split); `lengths` [N] default to `lengths_of(x)`, so NaN padding is left out."""
        lengths = trailing_lengths(x) if lengths is None else lengths
        if bool((lengths == x.shape[1]).all()):  # fixed length: as it always was
            self.mean.copy_(x.mean(dim=(0, 1)))
            self.std.copy_(x.std(dim=(0, 1)).clamp_min(1e-6))
            return
        frames = x[frame_mask(lengths, x.shape[1])]  # [real frames, C]
        self.mean.copy_(frames.mean(dim=0))
        self.std.copy_(frames.std(dim=0).clamp_min(1e-6))

    def features(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Sequence embedding [B, 2*hidden]: mean and max over each sequence's real frames; the SVM
        stage's input. x [B, T, C]; lengths int64 [B] on x's device, each in 1..T (frames past a
        sequence's length are ignored, NaN or not), or None when every sequence fills all T frames."""
        x = (x - self.mean) / self.std  # [B, T, C]
        if lengths is None:
            h = self.encoder(x.transpose(1, 2))  # [B, H, T]
            return torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)  # [B, 2H]
        mask = frame_mask(lengths, x.shape[1])  # [B, T]
        # Padding may be NaN, and NaN * 0 is NaN: replaced here, once; the blocks then multiply by
        # the mask, which is cheaper than torch.where.
        h = torch.where(mask[:, :, None], x, 0).transpose(1, 2)  # [B, C, T], zero past each end
        for block in self.encoder:
            h = block(h, mask)  # [B, H, T], zero past each end
        mean = h.sum(dim=2) / lengths[:, None].to(h.dtype)
        peak = torch.where(mask[:, None, :], h, float("-inf")).amax(dim=2)
        return torch.cat([mean, peak], dim=1)  # [B, 2H]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x, lengths))  # [B, num_classes] logits


def fill_gaps(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x [B, T, C] with NaN values inside sequences' real lengths -> filled, per channel, linearly over
    the frame index; a gap at either end takes the nearest observed value. This is the training data's
    `--missing interpolate` (aqtrack.data.missing, numpy.interp) in torch ops an exported graph can hold.
    Frames past a length stay as they are; a channel with no value at all stays NaN."""
    b, t, c = x.shape
    frame = torch.arange(t, device=x.device).view(1, t, 1).expand(b, t, c)
    inside = frame < lengths.view(b, 1, 1)
    seen = ~torch.isnan(x) & inside
    before = torch.where(seen, frame, -1).cummax(dim=1).values  # the last observed frame so far
    after = torch.where(seen, frame, t).flip(1).cummin(dim=1).values.flip(1)  # the next observed one
    p, n = before.clamp(min=0), after.clamp(max=t - 1)
    observed = torch.nan_to_num(x)
    xp, xn = observed.gather(1, p), observed.gather(1, n)
    between = xp + (xn - xp) * (frame - p).to(x.dtype) / (n - p).clamp(min=1).to(x.dtype)
    filled = torch.where((before >= 0) & (after < t), between, torch.where(before >= 0, xp, xn))
    return torch.where(torch.isnan(x) & inside & ((before >= 0) | (after < t)), filled, x)


class NanPaddedNet(nn.Module):
    """The network as the exported MLflow model: x float32 [B, T, C] of any B and T, where a sequence
    shorter than T ends in NaN frames; its length is found inside the graph (`trailing_lengths`), and a
    NaN inside it (a lost value) is filled linearly as training data is (`fill_gaps`). A sequence of NaN
    frames only, or with a channel that has no value, gets NaN logits."""

    def __init__(self, network: ActionQualityNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = trailing_lengths(x)
        # Always the masked path: whether a batch is padded is data, which a graph cannot branch on.
        return self.network(fill_gaps(x, lengths), lengths)  # [B, num_classes] logits


def _block(c_in: int, c_out: int, dilation: int) -> _Block:
    return _Block(
        nn.Conv1d(c_in, c_out, kernel_size=5, padding=2 * dilation, dilation=dilation),
        MaskedBatchNorm1d(c_out),
        nn.ReLU(),
    )


def build_model(spec: ModelSpec) -> ActionQualityNet:
    return ActionQualityNet(spec)


def network_from_state_dict(state: dict[str, torch.Tensor]) -> ActionQualityNet:
    """The network (eval mode) holding `state`, an `ActionQualityNet.state_dict()`, its spec read from
    the weights' shapes (dropout, which does nothing in eval mode, as 0). Raises ValueError when the
    keys or shapes are not this network's."""
    try:
        hidden, in_channels, _ = state["encoder.0.0.weight"].shape  # [H, C, kernel]
        num_classes = state["head.1.weight"].shape[0]  # [K, 2H]
    except (KeyError, ValueError, AttributeError) as e:
        raise ValueError(f"not an ActionQualityNet state dict ({type(e).__name__}: {e})") from e
    network = build_model(ModelSpec(in_channels, num_classes, hidden, dropout=0.0))
    try:
        network.load_state_dict(state)  # strict: every key, every shape
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(" ".join(first[:2])[:160]) from e
    return network.eval()


@torch.inference_mode()
def embed(
    model: ActionQualityNet, x: np.ndarray, lengths: np.ndarray | None = None, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 2*hidden], logits [N, num_classes]) of raw sequences x [N, T, C], in eval mode.
    Shorter sequences end in NaN frames; `lengths` [N] default to `lengths_of(x)`."""
    model.eval()
    lengths = lengths_of(x) if lengths is None else np.asarray(lengths, dtype=np.int64)
    data = torch.from_numpy(x)
    features, logits = [], []
    for start in range(0, len(x), batch_size):
        batch, batch_lengths = crop_batch(data, lengths, range(start, min(start + batch_size, len(x))))
        f = model.features(batch, batch_lengths)
        features.append(f)
        logits.append(model.head(f))
    return torch.cat(features).numpy(), torch.cat(logits).numpy()
