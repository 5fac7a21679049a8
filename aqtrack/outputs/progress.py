"""What a person watching training sees after each epoch: a tqdm bar per round on a terminal, one
structured log line per epoch elsewhere (logs, CI, pipes), nothing with `--quiet`.

`Progress` is an epoch hook, so the loop calls it like any other and never branches on the output.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from typing import Any

from aqtrack.config import TrainConfig
from aqtrack.names import (
    GRAD_NORM,
    LR,
    TRAIN_ACC,
    TRAIN_LOSS,
    VAL_ACC,
    VAL_BALANCED_ACC,
    VAL_F1_MACRO,
    VAL_LOSS,
)
from aqtrack.training.checkpoint import TrainState

log = logging.getLogger(__name__)

# What the log line and the bar's postfix show, and how.
SHOWN = ((TRAIN_LOSS, ".4f"), (TRAIN_ACC, ".4f"), (VAL_LOSS, ".4f"), (VAL_ACC, ".4f"))
SHOWN += ((VAL_BALANCED_ACC, ".4f"), (VAL_F1_MACRO, ".4f"), (LR, ".3e"))
SHOWN += ((GRAD_NORM, ".4f"),)
IN_BAR = (TRAIN_LOSS, VAL_LOSS, VAL_ACC, LR, GRAD_NORM)
# A fixed-width bar, and no rate (epochs/s says little): the metrics get the rest of the line.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:16}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def epoch_line(epoch: int, t: TrainConfig, metrics: dict[str, float]) -> str:
    """`epoch=5/300 round=1/3 round_epoch=5/100 train_loss=0.6931 ...`: one key=value line per epoch."""
    round_, in_round = divmod(epoch - 1, t.epochs_per_round)
    where = f"epoch={epoch}/{t.total_epochs} round={round_ + 1}/{t.rounds} "
    where += f"round_epoch={in_round + 1}/{t.epochs_per_round}"
    return " ".join([where, _values(metrics)])


def _values(metrics: dict[str, float], keys: tuple[str, ...] = tuple(k for k, _ in SHOWN)) -> str:
    return " ".join(f"{key}={metrics[key]:{fmt}}" for key, fmt in SHOWN if key in metrics and key in keys)


def mode(stream: Any = None) -> str:
    """'bar' on a terminal, 'log' otherwise, 'quiet' when the aqtrack logger is above INFO (`--quiet`,
    or a Python caller who configured no logging)."""
    if not logging.getLogger("aqtrack").isEnabledFor(logging.INFO):
        return "quiet"
    stream = sys.stderr if stream is None else stream
    return "bar" if getattr(stream, "isatty", lambda: False)() else "log"


class Progress:
    """An epoch hook and a context manager: `with Progress(cfg.train, state.epoch) as p: fit(..., [p])`.

    In 'bar' mode there is one tqdm bar per round (total = epochs_per_round, desc "Round r/R"), with the
    newest metrics as its postfix; a resumed run's bar starts where the run stopped. Log records are
    routed through tqdm meanwhile, so a warning does not tear the bar.
    """

    def __init__(self, train: TrainConfig, done: int, how: str | None = None) -> None:
        self.train, self.done, self.how = train, done, how or mode()
        self._bar: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Progress:
        if self.how == "bar" and self.done < self.train.total_epochs:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(logging_redirect_tqdm([logging.getLogger("aqtrack")]))
            self._open(self.done + 1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
        self._stack.close()

    def __call__(self, state: TrainState) -> None:
        metrics = {key: values[-1] for key, values in state.history.metrics.items() if values}
        if self.how == "log":
            log.info(epoch_line(state.epoch, self.train, metrics))
        elif self.how == "bar" and self._bar is not None:
            self._bar.set_postfix_str(_values(metrics, IN_BAR), refresh=False)
            self._bar.update(state.epoch - self.done)
            if state.epoch % self.train.epochs_per_round == 0:  # the round is complete
                self._close()
                if state.epoch < self.train.total_epochs:
                    self._open(state.epoch + 1)
        self.done = state.epoch

    def _open(self, epoch: int) -> None:
        from tqdm import tqdm

        t = self.train
        round_, in_round = divmod(epoch - 1, t.epochs_per_round)
        self._bar = tqdm(
            total=t.epochs_per_round,
            initial=in_round,
            desc=f"Round {round_ + 1}/{t.rounds}",
            unit="epoch",
            bar_format=BAR_FORMAT,
            file=sys.stderr,
            ncols=shutil.get_terminal_size().columns,  # a terminal of unknown size counts as 80 wide
            leave=True,
            mininterval=0,  # an epoch is slow enough to redraw after every one
        )

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
