"""aqtrack.cli: flags derived from the config, a light `--help`, and clean one-line errors."""

from __future__ import annotations

import gc
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


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The one line a refused command line prints (no argparse usage dump)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aqtrack: error: "), err
    return lines[0]


def test_bool_setting_with_a_bad_value_is_one_error_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--system-metrics", "maybe"]) == 2
    assert "--system-metrics: expected true or false (got 'maybe')" in one_error_line(capsys)


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


def test_the_program_leaves_its_objects_to_the_exit_and_a_call_does_not(monkeypatch, capsys) -> None:
    """`aqtrack` itself (no argv: its process ends next) freezes the collector's objects, so the
    interpreter's final collections skip them; `main([...])` called in a live process (a test, a
    notebook) leaves the collector alone."""
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    assert main(["train", "--rounds", "abc"]) == 2 and frozen == []
    monkeypatch.setattr(sys, "argv", ["aqtrack", "train", "--rounds", "abc"])
    assert main() == 2 and frozen == [True]
    assert "--rounds: expected a whole number" in capsys.readouterr().err


def test_bad_flag_value_is_one_error_line_naming_the_flag(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--rounds", "abc"]) == 2
    assert one_error_line(capsys) == (
        "aqtrack: error: --rounds: expected a whole number (got 'abc'); see `aqtrack train --help`"
    )


def test_unknown_optimizer_choice_is_one_error_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--optimizer", "sgd"]) == 2
    assert "--optimizer: invalid choice: 'sgd'" in one_error_line(capsys)


def test_an_abbreviated_flag_is_refused_with_a_suggestion(capsys: pytest.CaptureFixture) -> None:
    # argparse would take --round for --rounds; a typo must not pass silently
    assert main(["train", "--round", "3"]) == 2
    assert "unrecognized arguments: --round 3; did you mean --rounds?" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--rounds", "1.5"], "-P rounds / --rounds: expected a whole number (got '1.5')"),
        (["--rounds", "0"], "-P rounds / --rounds must be >= 1 (got 0)"),
        (["--epochs_per_round", "x"], "-P epochs_per_round / --epochs-per-round: expected a whole number"),
        (["--fork_epoch", "2.5"], "-P fork_epoch / --fork-epoch: expected a whole number (got '2.5')"),
        (["--round", "3"], "-P round: not a parameter of this project; did you mean -P rounds?"),
    ],
)
def test_under_mlflow_run_an_error_names_the_parameter_and_the_flag(capsys, argv, error) -> None:
    assert main(["train", "--from-mlproject", *argv]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"aqtrack: error: {error}"), line
    assert len(line) < 300


def test_mlproject_parameters_arrive_as_the_settings_they_name() -> None:
    from aqtrack.cli import _from_mlproject

    argv = ["train", "--from-mlproject", "--rounds", "3.0", "--epochs_per_round", "5", "--svm", "false"]
    argv += ["--resume_run_id", "auto", "--fork_run_id", "", "--fork_epoch", "2"]
    args = build_parser().parse_args(_from_mlproject(argv))
    assert (args.rounds, args.epochs_per_round, args.svm) == (3, 5, False)
    assert (args.resume, args.fork, args.fork_epoch) == ("auto", "", 2)
    assert not hasattr(args, "lr")  # not given: absent, whatever its default


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


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["cv"],
            "aqtrack: error: cv needs --folds K (grouped, stratified K-fold by subject) or --folds loso",
        ),
        (["cv", "--folds", "3", "--fold", "2"], "aqtrack: error: cv trains every fold; --fold is for"),
        (["cv", "--folds", "1"], "aqtrack: error: --folds must be '', a whole number >= 2 or loso (got '1')"),
        (["cv", "--resume", "abc"], "aqtrack: error: cv --resume 'abc': not a run id"),
        (["cv", "--folds", "3", "--jobs", "0"], "aqtrack: error: --jobs must be a whole number >= 1 (got 0)"),
        (
            ["cv", "--from-mlproject", "--folds", "3", "--fork_epoch", "2"],
            "aqtrack: error: -P fork_epoch: not a parameter of this entry point",
        ),
    ],
)
def test_a_cross_validation_that_cannot_start_is_one_error_line_and_no_run(capsys, argv, error) -> None:
    assert main(argv) == 2
    assert one_error_line(capsys).startswith(error)
    assert MlflowClient().get_experiment_by_name("action-quality") is None
