"""Gradient alerts: epochs whose mean pre-clip `grad_norm` explodes or vanishes.

Each such epoch is warned about once on the console, as it ends. The run keeps them as tags
(`aqtrack.grad_explosion_epochs: "3-5,9"`), derived from the whole history every time, so a resumed run
ends with the same tags as one that was never interrupted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from aqtrack.checkpoint import TrainState
from aqtrack.metrics import GRAD_EXPLOSION, GRAD_NORM, GRAD_VANISHING

log = logging.getLogger(__name__)

TAG_GRAD_EXPLOSION_EPOCHS = "aqtrack.grad_explosion_epochs"
TAG_GRAD_VANISHING_EPOCHS = "aqtrack.grad_vanishing_epochs"


def exploding(value: float) -> bool:
    return math.isfinite(value) and value > GRAD_EXPLOSION


def vanishing(value: float) -> bool:
    return math.isfinite(value) and value < GRAD_VANISHING


def compact_ranges(epochs: Sequence[int]) -> str:
    """[3, 4, 5, 9] -> "3-5,9"."""
    parts: list[str] = []
    start = prev = None
    for e in [*sorted(epochs), None]:
        if prev is not None and e != prev + 1:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = e
        elif start is None:
            start = e
        prev = e
    return ",".join(parts)


def alert_tags(grad_norms: Sequence[float | None]) -> dict[str, str]:
    """The run tags for a whole history of per-epoch `grad_norm` (index = epoch - 1); none if all is well."""
    tags = {}
    for tag, test in ((TAG_GRAD_EXPLOSION_EPOCHS, exploding), (TAG_GRAD_VANISHING_EPOCHS, vanishing)):
        epochs = [i for i, v in enumerate(grad_norms, 1) if v is not None and test(v)]
        if epochs:
            tags[tag] = compact_ranges(epochs)
    return tags


def gradient_alerts(tracker) -> Callable[[TrainState], None]:
    """An epoch-end hook: warn about this epoch, and queue the tags (sent in the epoch's one flush)."""
    sent: dict[str, str] = {}

    def check(state: TrainState) -> None:
        norms = state.history.metrics.get(GRAD_NORM, [])
        if not norms:
            return
        value = norms[-1]
        if exploding(value):
            log.warning(
                "epoch %d: grad_norm %.3g is above %g: exploding gradients (lower --lr or check the data)",
                state.epoch, value, GRAD_EXPLOSION,
            )  # fmt: skip
        elif vanishing(value):
            log.warning(
                "epoch %d: grad_norm %.3g is below %g: vanishing gradients (the network barely learns)",
                state.epoch, value, GRAD_VANISHING,
            )  # fmt: skip
        tags = alert_tags(norms)
        if tags != sent:
            tracker.set_tags(tags)
            sent.clear()
            sent.update(tags)

    return check
