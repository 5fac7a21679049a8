"""Mixed precision (`--amp bf16|fp16`): autocast for the forward pass and, for fp16, a gradient scaler.

Only on CUDA. Elsewhere training runs in full precision with a warning, so that a run trained with AMP
on a GPU can be resumed on a CPU machine (`amp` is the run's own setting and cannot change on resume);
its gradient scaler state is kept in the checkpoints for when it goes back to a GPU.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch

from aqtrack.config import flag
from aqtrack.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _disabled_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", enabled=False)


@dataclass
class Precision:
    """How the training step computes: autocast dtype (None: full precision) and the gradient scaler
    (a disabled one passes everything through unchanged)."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler = field(default_factory=_disabled_scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def precision_for(amp: str, device: torch.device) -> Precision:
    """The precision `--amp` asks for, on `device`."""
    if amp == "none":
        return Precision(device.type)
    if device.type != "cuda":
        log.warning(
            "%s %s: mixed precision is used on CUDA only; training on %s in full precision",
            flag("amp"),
            amp,
            device,
        )
        return Precision(device.type)
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"{flag('amp')} bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
            f"use {flag('amp')} fp16 or none"
        )
    return mixed(amp, device.type)


def mixed(amp: str, device_type: str) -> Precision:
    """Autocast to `amp`'s dtype; fp16 also scales the loss, so that small gradients don't flush to
    zero in its narrow range (bf16 has float32's range and needs no scaler)."""
    scaler = torch.amp.GradScaler(device_type, enabled=amp == "fp16")
    return Precision(device_type, DTYPES[amp], scaler)
