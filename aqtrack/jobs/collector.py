"""Python's garbage collector around a training: off while the run sets up and finishes, on for the epochs.

Setting a run up and finishing it imports torch's compiler, MLflow's store, sklearn, skops and
matplotlib: millions of objects that live as long as the process. With the collector on, every time
they grow by a quarter it walks all of them again: nine full passes in a 40-sample run, ~2.5 s of its
~15 s (`benchmarks/small_run.py`), for almost no garbage. So the collector is off for those stages
(`paused`). For the epochs it is on (`collecting`), with everything made before them frozen first
(`gc.freeze`): the loop's collections walk only what the loop makes, not the backlog of the set-up.
What the set-up left in reference cycles (~5,000 small objects in a 40-sample run; finding them would
cost a pass of ~0.5 s over everything it made) so waits until the training ends, when the frozen
objects are put back (`gc.unfreeze`): a process that goes on (a notebook, cross-validation's folds)
then frees it, as it would have.

A collector the caller switched off, or objects the caller froze (a process that freezes its own, e.g.
before forking workers), are the caller's business: then nothing here touches the collector. One
training at a time per process (the flag below is the process's).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_held = False  # whether `paused` switched the collector off (so `collecting` may switch it on)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off for the block, then as it was; objects `collecting` froze are put back."""
    global _held
    if _held or not gc.isenabled() or gc.get_freeze_count():
        yield  # nested, or the caller's collector: left alone
        return
    gc.disable()
    _held = True
    try:
        yield
    finally:
        _held = False
        gc.unfreeze()
        gc.enable()


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """Within `paused`: the collector on for the block (the epochs), what exists by then frozen first."""
    if not _held:
        yield
        return
    gc.freeze()
    gc.enable()
    try:
        yield
    finally:
        gc.disable()
