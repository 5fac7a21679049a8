"""Gradient alerts: epochs whose mean pre-clip `grad_norm` explodes or vanishes, for this run.

What a healthy gradient norm is depends on the data, the model and the batch size (on this project's
test data, healthy trainings start anywhere between 3 and 11 and settle around 2; real recordings start
higher), so a fixed threshold fired at epoch 1 of most healthy runs. The thresholds are the run's own:

- **exploding**: above EXPLOSION_FACTOR (10) x the median of the previous (up to) BASELINE_EPOCHS
  epochs: a sudden jump, what precedes a diverging loss;
- **vanishing**: below the median of the run's first (up to) BASELINE_EPOCHS epochs / VANISHING_FACTOR
  (100), while the training loss is still above a tenth of its first epoch's: the gradients collapsed
  before the network fitted the data (a network that fitted it has little gradient left, rightly).

No epoch is judged before MIN_BASELINE epochs of history exist: the first epochs' norms are large and
that is normal. Each such epoch is warned about once on the console, as it ends. The run keeps them as
tags (`aqtrack.grad_explosion_epochs: "3-5,9"`), derived from the whole history every time, so a resumed
run ends with the same tags as one that was never interrupted.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence

from aqtrack.names import GRAD_NORM, TAG_GRAD_EXPLOSION_EPOCHS, TAG_GRAD_VANISHING_EPOCHS, TRAIN_LOSS
from aqtrack.training.checkpoint import TrainState

log = logging.getLogger(__name__)

EXPLOSION_FACTOR = 10.0
VANISHING_FACTOR = 100.0
BASELINE_EPOCHS = 10
MIN_BASELINE = 3
FITTED_LOSS = 0.1  # of the first epoch's training loss: below it, small gradients mean "fitted"


def _median(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if len(finite) >= MIN_BASELINE else None


def thresholds(grad_norms: Sequence[float | None]) -> list[tuple[float | None, float | None]]:
    """(explosion, vanishing) threshold of each epoch (index = epoch - 1); None before a baseline exists."""
    out = []
    for i in range(len(grad_norms)):  # from the epochs before only: an epoch's verdict never changes
        recent = _median(grad_norms[max(0, i - BASELINE_EPOCHS) : i])
        early = _median(grad_norms[: min(i, BASELINE_EPOCHS)])
        out.append(
            (
                None if recent is None else EXPLOSION_FACTOR * recent,
                None if early is None else early / VANISHING_FACTOR,
            )
        )
    return out


def alert_epochs(
    grad_norms: Sequence[float | None], train_losses: Sequence[float | None] = ()
) -> tuple[list[int], list[int]]:
    """(exploding epochs, vanishing epochs) of a whole history (1-based)."""
    exploding, vanishing = [], []
    first_loss = next((v for v in train_losses if v is not None and math.isfinite(v)), None)
    for epoch, (value, (high, low)) in enumerate(zip(grad_norms, thresholds(grad_norms), strict=True), 1):
        if value is None or not math.isfinite(value):
            continue
        if high is not None and value > high:
            exploding.append(epoch)
        loss = train_losses[epoch - 1] if epoch <= len(train_losses) else None
        still_learning = first_loss is None or loss is None or loss > FITTED_LOSS * first_loss
        if low is not None and value < low and still_learning:
            vanishing.append(epoch)
    return exploding, vanishing


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


def alert_tags(
    grad_norms: Sequence[float | None], train_losses: Sequence[float | None] = ()
) -> dict[str, str]:
    """The run tags for a whole history of per-epoch `grad_norm` (index = epoch - 1); none if all is well."""
    exploding, vanishing = alert_epochs(grad_norms, train_losses)
    tags = {}
    for tag, epochs in ((TAG_GRAD_EXPLOSION_EPOCHS, exploding), (TAG_GRAD_VANISHING_EPOCHS, vanishing)):
        if epochs:
            tags[tag] = compact_ranges(epochs)
    return tags


_WARNING = "epoch %d: grad_norm %.3g %s: %s"
_EXPLODING = "exploding gradients (lower --lr or --max-grad-norm, or check the data)"
_VANISHING = "vanishing gradients (the network barely learns)"


def gradient_alerts(tracker) -> Callable[[TrainState], None]:
    """An epoch-end hook: warn about this epoch, and queue the tags (sent in the epoch's one flush)."""
    sent: dict[str, str] = {}

    def check(state: TrainState) -> None:
        norms = state.history.metrics.get(GRAD_NORM, [])
        if not norms:
            return
        losses = state.history.metrics.get(TRAIN_LOSS, [])
        exploding, vanishing = alert_epochs(norms, losses)
        high, low = thresholds(norms)[-1]
        if state.epoch in exploding:
            what = f"is over {EXPLOSION_FACTOR:g}x the median of the epochs before (above {high:.3g})"
            log.warning(_WARNING, state.epoch, norms[-1], what, _EXPLODING)
        elif state.epoch in vanishing:
            what = f"fell below 1/{VANISHING_FACTOR:g} of its early median (below {low:.3g})"
            what += " while the training loss is still high"
            log.warning(_WARNING, state.epoch, norms[-1], what, _VANISHING)
        tags = alert_tags(norms, losses)
        if tags != sent:
            tracker.set_tags(tags)
            sent.clear()
            sent.update(tags)

    return check
