"""scripts/: the soak script runs and reports what it checked; kill_at.py refuses a bad kill point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_soak_quick_survives_its_kills_and_finds_every_run_identical(tmp_path):
    before = set(tmp_path.iterdir())
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "soak.py"), "--quick"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 kills survived" in done.stdout
    assert "result: every run identical to the uninterrupted one" in done.stdout
    assert set(tmp_path.iterdir()) == before  # its store and outputs live in its own temp dir


def test_kill_at_refuses_an_unknown_point_naming_the_known_ones(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "kill_at.py"), "nowhere:1", "--", "train"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "'nowhere:1': want POINT:N with N >= 1 and POINT one of batch, evaluate," in done.stderr
