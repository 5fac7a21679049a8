"""aqtrack.jobs.collector: the garbage collector off while a run sets up and finishes, on for its epochs,
and the caller's collector as the caller left it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import aqtrack
from aqtrack.jobs import collector, pipeline


@pytest.fixture(autouse=True)
def collector_as_found() -> Iterator[None]:
    """Whatever a test does to the collector, the next test finds it on and nothing frozen."""
    yield
    gc.unfreeze()
    gc.enable()


def spy_on_the_finishing_stage(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What `gc.isenabled()` said when the finishing stage started, one entry per run."""
    seen, finish = [], pipeline.finish_run

    def finish_run(job):
        seen.append(gc.isenabled())
        return finish(job)

    monkeypatch.setattr(pipeline, "finish_run", finish_run)
    return seen


def epoch_spy(seen: list[tuple[bool, int]]):
    """An epoch callback that records (collector on, objects frozen) at each epoch's end."""
    return lambda state: seen.append((gc.isenabled(), gc.get_freeze_count()))


def test_a_run_collects_during_its_epochs_only_and_leaves_the_collector_as_it_found_it(tiny, monkeypatch):
    finishing, epochs = spy_on_the_finishing_stage(monkeypatch), []
    aqtrack.train(**tiny, callbacks=[epoch_spy(epochs)])
    assert finishing == [False]
    assert len(epochs) == 4 and all(on and frozen > 0 for on, frozen in epochs)  # set-up objects frozen
    assert gc.isenabled() and gc.get_freeze_count() == 0  # put back: a notebook can free them


def test_a_collector_the_caller_switched_off_stays_off(tiny, monkeypatch):
    finishing, epochs = spy_on_the_finishing_stage(monkeypatch), []
    gc.disable()
    aqtrack.train(**tiny, callbacks=[epoch_spy(epochs)])
    assert finishing == [False] and [on for on, _ in epochs] == [False] * 4
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def test_objects_the_caller_froze_stay_frozen_and_the_collector_on(tiny, monkeypatch):
    finishing, epochs = spy_on_the_finishing_stage(monkeypatch), []
    gc.freeze()
    aqtrack.train(**tiny, callbacks=[epoch_spy(epochs)])
    assert finishing == [True] and all(on for on, _ in epochs)
    assert gc.isenabled() and gc.get_freeze_count() > 0  # never unfrozen (some were freed since)


def test_a_failing_stage_leaves_the_collector_on_and_nothing_frozen():
    with pytest.raises(RuntimeError), collector.paused():
        assert not gc.isenabled()
        with collector.collecting():
            assert gc.isenabled() and gc.get_freeze_count() > 0
            raise RuntimeError("an epoch failed")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_nested_pauses_leave_the_switching_to_the_outer_one():
    with collector.paused():
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner one did not switch it back on
        with collector.collecting():
            assert gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collecting_outside_a_pause_changes_nothing():
    with collector.collecting():
        assert gc.isenabled() and gc.get_freeze_count() == 0
