"""aqtrack.cli: flags derived from the config, a light `--help`, and clean one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from aqtrack.cli import build_parser, main
from aqtrack.config import config_fields, flag

HEAVY = ("torch", "mlflow", "pandas", "sklearn", "matplotlib")


def _has_flag(text: str, option: str) -> bool:
    # Whole option only: "--data" must not be found inside "--data-seed".
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_train_help_lists_a_flag_for_every_config_field_and_resume(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    missing = [flag(name) for _, name, _ in config_fields() if not _has_flag(out, flag(name))]
    assert missing == []
    assert _has_flag(out, "--resume")
    assert "--from-mlproject" not in out  # internal: passed by the MLproject entry point only


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], None),
        (["--svm"], True),
        (["--svm", "false"], False),
        (["--svm", "TRUE"], True),
        (["--no-svm"], False),
    ],
)
def test_bool_settings_take_a_bare_flag_a_value_or_no_prefix(args: list[str], expected: bool | None) -> None:
    parsed = build_parser().parse_args(["train", *args])
    assert getattr(parsed, "svm", None) is expected  # absent unless typed, like every setting


def test_bool_setting_with_a_bad_value_is_refused_by_argparse(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--system-metrics", "maybe"])
    assert info.value.code == 2
    assert "expected true or false (got 'maybe')" in capsys.readouterr().err


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_building_the_parser_and_printing_help_imports_nothing_heavy() -> None:
    code = f"""
import contextlib, io, sys
from aqtrack.cli import build_parser

build_parser().parse_args(["train"])
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        build_parser().parse_args(["train", "--help"])
    except SystemExit as e:
        assert e.code == 0, e.code
assert "--rounds" in out.getvalue()
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()}"


def test_python_m_aqtrack_help_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aqtrack", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "report" in result.stdout


def test_bad_flag_value_exits_2_via_argparse(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--rounds", "abc"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--rounds" in err and "'abc'" in err


def test_unknown_optimizer_choice_exits_2_via_argparse(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--optimizer", "sgd"])
    assert info.value.code == 2
    assert "--optimizer" in capsys.readouterr().err


def _all_runs() -> list:
    client = MlflowClient()  # the test's sqlite store, from MLFLOW_TRACKING_URI
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiment_ids) if experiment_ids else []


def test_invalid_setting_prints_one_error_line_and_creates_no_run(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--rounds", "0"]) == 2

    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("aqtrack: error: --rounds must be "), lines[0]
    assert "(got 0)" in lines[0]
    assert captured.out == ""
    assert _all_runs() == []
    assert MlflowClient().get_experiment_by_name("action-quality") is None


class _Writes:
    """A stderr that keeps each write() call apart."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_an_error_line_is_written_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under torchrun all ranks share stderr; `print` writes a line and its newline apart, and two ranks'
    # error lines then ran into each other.
    stderr = _Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["show", "not-a-run"]) == 2
    errors = [call for call in stderr.calls if call.startswith("aqtrack: error:")]
    assert len(errors) == 1 and errors[0].endswith("\n") and errors[0].count("\n") == 1, stderr.calls
