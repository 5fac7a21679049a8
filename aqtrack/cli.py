"""`aqtrack` command line. Flags are derived from the config dataclasses; heavy imports wait for a command.

aqtrack train [--rounds 3 ...] [--resume RUN_ID|auto | --fork RUN_ID --fork-epoch N]
aqtrack cv --folds K|loso [--jobs N] [--rounds 3 ...] | aqtrack cv --resume PARENT_ID
aqtrack report RUN_ID -o DIR
aqtrack runs [--experiment NAME | --all]
aqtrack show RUN_ID [--tail N]
aqtrack svm RUN_ID [--svm-c C] [--svm-kernel K]
aqtrack plot RUN_ID|experiment_report.json [-o curves.png]
aqtrack predict RUN_ID|models:/NAME/VERSION FILE [-o predictions.csv]
"""

from __future__ import annotations

import argparse
import difflib
import gc
import itertools
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from aqtrack.config import RESUMABLE, SVM_KERNELS, Config, config_fields, flag, parse_bool, parse_int, show
from aqtrack.errors import AqtrackError, ConfigError


def _typed(parse):
    """An argparse type from one of config's parsers: its message, not argparse's "invalid value"."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__
    return convert


CURVES_PNG = "training_curves.png"
TYPES = {"int": _typed(parse_int), "float": float, "str": str, "bool": _typed(parse_bool)}
FROM_MLPROJECT = "--from-mlproject"
# `mlflow run . -P name=value` passes each parameter to the MLproject command as `--name value`
# (none is declared there, so that exactly the ones given arrive): these are the names it accepts.
MLPROJECT_PARAMETERS = {
    "resume_run_id": "--resume",
    "fork_run_id": "--fork",
    "fork_epoch": "--fork-epoch",
    **{name: flag(name) for _, name, _ in config_fields()},
}
# The `cv` entry point's: every setting, resume_run_id (a CV parent) and jobs.
CV_MLPROJECT_PARAMETERS = {
    "resume_run_id": "--resume",
    "jobs": "--jobs",
    **{name: flag(name) for _, name, _ in config_fields()},
}


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad command line is one `aqtrack: error:` line, not a usage dump, and an
    option is only recognised whole (`--round` is not `--rounds`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        found = re.match(r"argument (--[a-z0-9-]+)(?:/[^:]*)?: (.*)", message)
        if found:  # "argument --rounds: expected a whole number" -> "--rounds: expected a whole number"
            option, message = found[1], f"{found[1]}: {found[2]}"
            raise ConfigError(f"{message}; see `{self.prog} --help`", setting=option[2:].replace("-", "_"))
        unknown = re.match(r"unrecognized arguments: (--[\w-]+)", message)
        if unknown:
            close = difflib.get_close_matches(unknown[1], self._all_options(), n=1)
            message += f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"{message}; see `{self.prog} --help`")

    def _all_options(self) -> list[str]:
        """Every option of this parser and of its subcommands."""
        options = []
        for action in self._actions:
            options += action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                options += [o for sub in action.choices.values() for o in sub._all_options()]
        return options


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aqtrack", description="Train an action-quality classifier, tracked in MLflow.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a new run, resume one by run id, or fork one",
        description="Train an action-quality classifier, tracked in MLflow: a new run, a resume (--resume "
        "RUN_ID|auto) or a fork (--fork RUN_ID --fork-epoch N). Validation selects the best epoch; the "
        "held-out test split is evaluated once at the end (the numbers to report).",
    )
    origin = train.add_argument_group("where the run starts")
    origin.add_argument(
        "--resume",
        metavar="RUN_ID",
        default="",
        help="continue this run from its last checkpoint ('auto': the newest unfinished run of this job)",
    )
    origin.add_argument(
        "--fork", metavar="RUN_ID", default="", help="a new run from this run's checkpoint at --fork-epoch"
    )
    origin.add_argument(
        "--fork-epoch", type=_typed(parse_int), metavar="N", help="the epoch of the --fork run to start from"
    )
    # Set by the MLproject entry point: parameters arrive as `--name value`, and the process watches
    # the `mlflow run` process that started it.
    train.add_argument(FROM_MLPROJECT, action="store_true", help=argparse.SUPPRESS)
    train.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final summary")
    _add_settings(train)

    _add_cv(commands)

    report = commands.add_parser("report", help="rebuild experiment_report.json from a run's MLflow metrics")
    report.add_argument("run_id", metavar="RUN_ID")
    report.add_argument("-o", "--output-dir", type=Path, default=Path("."), help="where to write it")

    runs = commands.add_parser(
        "runs", help="a table of the experiment's runs: progress, best val_acc, resumable"
    )
    runs.add_argument("--experiment", metavar="NAME", help="the experiment (default: action-quality)")
    runs.add_argument("--all", action="store_true", help="the runs of every experiment")

    show = commands.add_parser("show", help="a run's summary, params, last epochs and artifacts")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument(
        "--tail", type=int, default=10, metavar="N", help="epochs of metrics to show (default 10)"
    )
    _add_svm_and_plot(commands)
    _add_predict(commands)
    return parser


def _add_cv(commands) -> None:
    cv = commands.add_parser(
        "cv",
        help="cross-validate by subject: one parent run, one nested run per fold (--folds K or loso)",
        description="Cross-validate: --folds K (grouped, stratified K-fold by subject) or --folds loso (one "
        "fold per subject), with any training setting. Each fold is a run nested under one parent run, "
        "which aggregates the finished folds; --resume PARENT_ID continues a stopped one.",
    )
    cv.add_argument(
        "--resume",
        metavar="RUN_ID",
        default="",
        help="continue this cross-validation (its parent run): finished folds are kept, an interrupted one "
        "resumes from its checkpoint, the missing ones are trained",
    )
    cv.add_argument(
        "--jobs",
        type=_typed(parse_int),
        default=1,
        metavar="N",
        help="train folds in N worker processes, each with 1/N of torch's threads (default 1: here)",
    )
    cv.add_argument(FROM_MLPROJECT, action="store_true", help=argparse.SUPPRESS)
    cv.add_argument("-q", "--quiet", action="store_true", help="only warnings and the results")
    _add_settings(cv)


def _add_svm_and_plot(commands) -> None:
    svm = commands.add_parser(
        "svm", help="refit the SVM stage of a finished run, logged as a run nested under it"
    )
    svm.add_argument("run_id", metavar="RUN_ID")
    svm.add_argument("--svm-c", dest="c", type=float, metavar="C", help="SVM C (default: the run's)")
    svm.add_argument("--svm-kernel", dest="kernel", choices=SVM_KERNELS, help="kernel (default: the run's)")
    plot = commands.add_parser("plot", help="draw the training curves of a run or an experiment_report.json")
    plot.add_argument("source", metavar="SOURCE", help="a run id or the path of an experiment_report.json")
    plot.add_argument("-o", "--output", type=Path, default=Path(CURVES_PNG), help="the PNG file to write")


def _add_predict(commands) -> None:
    predict = commands.add_parser(
        "predict", help="score recordings with a run's best network or a registered model, as a CSV"
    )
    predict.add_argument(
        "source",
        metavar="SOURCE",
        help="a training run id, models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model",
    )
    predict.add_argument(
        "file",
        metavar="FILE",
        type=Path,
        help="recordings: .csv, .parquet, .npz or .ts; labels optional, per recording",
    )
    predict.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="write the predictions CSV here (default: stdout; the scores, with labels, go to stderr)",
    )


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped by section. Unset flags stay absent (SUPPRESS), so a resume
    can tell what the user typed from what is the default."""
    defaults = Config().to_dict()
    for section, fields in itertools.groupby(config_fields(), key=lambda item: item[0]):
        group = parser.add_argument_group(f"{section} settings")
        for _, name, f in fields:
            choices = f.metadata["choices"]
            resumable = "; can change on resume" if name in RESUMABLE - {"experiment"} else ""
            help = f"{f.metadata['help']} (default: {show(defaults[name])}{resumable})"
            if str(f.type) == "bool":  # `--svm`, `--svm false` (what MLproject passes) and `--no-svm`
                group.add_argument(
                    flag(name), dest=name, type=TYPES['bool'], nargs="?", const=True, metavar="true|false",
                    default=argparse.SUPPRESS, help=help,
                )  # fmt: skip
                group.add_argument(
                    "--no-" + flag(name)[2:], dest=name, action="store_false", default=argparse.SUPPRESS,
                    help=f"same as {flag(name)} false",
                )  # fmt: skip
                continue
            group.add_argument(
                flag(name),
                dest=name,
                type=TYPES[str(f.type)],
                choices=choices,
                default=argparse.SUPPRESS,
                metavar=None if choices else name.upper(),
                help=help,
            )


def main(argv: list[str] | None = None) -> int:
    """Run one command line; returns its exit status. Without `argv` this is the program itself (the
    console script, `python -m aqtrack`): the process ends when it returns."""
    if argv is not None:
        return _command(list(argv))
    code = _command(sys.argv[1:])
    # The interpreter's last act is to clear every module and collect garbage, walking every object the
    # imports made (torch, mlflow, sklearn...): ~3 s after a training, most of a small run's exit. Frozen,
    # the objects are left to the process's end. Nothing here waits on a collection: runs are ended,
    # files closed and temporary folders removed by now, and atexit handlers still run.
    gc.freeze()
    return code


def _command(argv: list[str]) -> int:
    mlproject = FROM_MLPROJECT in argv
    try:
        args = build_parser().parse_args(_from_mlproject(argv) if mlproject else argv)
    except ConfigError as e:
        _configure_logging(quiet=False)
        message = _named(e, mlproject)
        if argv and argv[0] in COMMANDS:  # point to the command's own help, not the top level's
            message = message.replace("see `aqtrack --help`", f"see `aqtrack {argv[0]} --help`")
        _say(f"aqtrack: error: {message}")
        return 2
    _configure_logging(quiet=getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except AqtrackError as e:
        _say(f"aqtrack: error: {_named(e, mlproject)}")
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        _say(f"aqtrack: interrupted ({signal.Signals(signum).name})")
        return 128 + signum  # what a shell reports for a process the signal ended
    except BrokenPipeError:  # `aqtrack runs | head`: the reader is gone, and that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exiting cannot fail again
        return 0


def _say(line: str) -> None:
    """One line to stderr in one write: under torchrun every rank shares it, and `print` writes the text
    and its newline separately, so two ranks' lines could run into each other."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _from_mlproject(argv: list[str]) -> list[str]:
    """The MLproject command line as the parser wants it: `--epochs_per_round 5` (how `mlflow run`
    passes `-P epochs_per_round=5`) as `--epochs-per-round 5`; an unknown `-P` name is one error line."""
    start = argv.index(FROM_MLPROJECT) + 1
    out = argv[:start]
    cv = bool(argv) and argv[0] == "cv"
    parameters = CV_MLPROJECT_PARAMETERS if cv else MLPROJECT_PARAMETERS
    for i in range(start, len(argv), 2):  # `--name value` pairs
        name = argv[i][2:] if argv[i].startswith("--") else ""
        if name not in parameters:
            close = difflib.get_close_matches(name, parameters, n=1)
            raise ConfigError(
                f"-P {name or argv[i]}: not a parameter of this {'entry point' if cv else 'project'}"
                + (f"; did you mean -P {close[0]}?" if close else "")
                + "; the parameters are `aqtrack train`'s settings (`aqtrack train --help`, - as _), "
                + (
                    "resume_run_id (a cross-validation) and jobs"
                    if cv
                    else "resume_run_id, fork_run_id and fork_epoch"
                )
            )
        out += [parameters[name], *argv[i + 1 : i + 2]]
    return out


def _named(e: AqtrackError, mlproject: bool) -> str:
    """The error, naming the MLproject parameter too when the setting came from `mlflow run`."""
    setting, message = getattr(e, "setting", None), str(e)
    if not (mlproject and setting):
        return message
    parameter = next((p for p, option in MLPROJECT_PARAMETERS.items() if option == flag(setting)), setting)
    if message.startswith(flag(setting)):
        return f"-P {parameter} / {message}"
    return f"-P {parameter} ({flag(setting)}): {message}"


def _train(args: argparse.Namespace) -> int:
    from aqtrack.jobs.pipeline import train
    from aqtrack.training.interrupts import launcher_process, stop_when_gone

    origin = {"resume", "fork", "fork_epoch", "command", "quiet", "from_mlproject"}
    settings: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in origin}
    launcher = launcher_process() if args.from_mlproject else None
    if launcher is not None:
        # `mlflow run` starts this in the project's directory; relative paths (-P data=sessions.csv, the
        # outputs folder) mean what they mean where the user typed `mlflow run`.
        os.chdir(launcher.cwd())
    with stop_when_gone(launcher):
        result = train(resume=args.resume, fork=args.fork, fork_epoch=args.fork_epoch, **settings)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return 0
    print(summary(result))
    return 0


def summary(result) -> str:
    """The line `aqtrack train` ends with: the best epoch (chosen on validation) and the test scores (the
    numbers to report), then where the legacy report is."""
    best = f"best {result.select_by} {result.best_score:.4f} (epoch {result.best_epoch}"
    best += f", val_acc {result.best_val_acc:.4f})" if result.select_by != "val_acc" else ")"
    test = ", ".join(f"{k} {v:.4f}" for k, v in result.test_scores.items())
    epochs = f"{result.epochs} epoch{'s' if result.epochs != 1 else ''}"
    return f"run {result.run_id}: {epochs}, {best}{'; ' + test if test else ''}; report: {result.report_path}"


def _cv(args: argparse.Namespace) -> int:
    from aqtrack.jobs.crossval import cross_validate
    from aqtrack.training.interrupts import launcher_process, stop_when_gone

    origin = {"resume", "jobs", "command", "quiet", "from_mlproject"}
    settings: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in origin}
    launcher = launcher_process() if args.from_mlproject else None
    if launcher is not None:
        os.chdir(launcher.cwd())  # relative paths mean what they mean where `mlflow run` was typed
    with stop_when_gone(launcher):
        result = cross_validate(resume=args.resume or None, jobs=args.jobs, **settings)
    print(_cv_summary(result))
    return 1 if result.failed else 0


def _cv_summary(result) -> str:
    from aqtrack.names import CV_MEAN, CV_STD, TEST_KEYS

    lines = []
    if result.folds:
        import pandas as pd

        table = pd.DataFrame([f.row() for f in result.folds]).drop(columns=["subjects"])
        lines.append(table.to_string(index=False, float_format="{:.4f}".format))
    s = result.scores
    scores = ", ".join(
        f"{k} {s[CV_MEAN[k]]:.4f}" + (f" ± {s[CV_STD[k]]:.4f}" if CV_STD[k] in s else "") for k in TEST_KEYS
    )
    done = f"{result.folds_finished} of {result.folds_planned} folds"
    lines.append(
        f"cv {result.run_id}: {done}"
        + (f"; {scores} (mean ± sample std over the folds)" if result.folds else "")
    )
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    from aqtrack.jobs.pipeline import rebuild_report

    print(rebuild_report(args.run_id, args.output_dir))
    return 0


def _runs(args: argparse.Namespace) -> int:
    from aqtrack.tracking.browse import format_runs, runs_table

    if args.all and args.experiment:
        raise ConfigError("runs: pass --experiment NAME or --all, not both")
    print(format_runs(runs_table(args.experiment, all_experiments=args.all)))
    return 0


def _show(args: argparse.Namespace) -> int:
    from aqtrack.tracking.browse import show_run

    if args.tail < 1:
        raise ConfigError(f"show: --tail must be >= 1 (got {args.tail})")
    print(show_run(args.run_id, tail=args.tail))
    return 0


def _svm(args: argparse.Namespace) -> int:
    from aqtrack.jobs.refit import fit_svm

    result = fit_svm(args.run_id, c=args.c, kernel=args.kernel)
    print(
        f"run {result.refit_of}: SVM refit (kernel={result.kernel}, C={result.c:g}) logged as nested run "
        f"{result.run_id}: svm_val_acc {result.val_acc:.4f}, svm_val_f1 {result.val_f1:.4f}"
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from aqtrack.jobs.curves import plot_curves
    from aqtrack.outputs.plots import save_png

    figure = plot_curves(args.source)
    try:
        print(save_png(figure, args.output))
    except OSError as e:
        raise ConfigError(f"-o {args.output}: not writable ({e.strerror or e}); choose another file") from e
    return 0


def _predict(args: argparse.Namespace) -> int:
    from aqtrack.jobs.predictions import score

    result = score(args.source, args.file, args.output)
    if args.output is not None:
        for line in result.lines(args.output):
            print(line)
        return 0
    # The CSV alone on stdout, so it can be piped; what a person reads goes to stderr.
    try:
        result.table.to_csv(sys.stdout, index=False)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader is gone; stdout to devnull so exiting cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    for line in result.lines(None):
        _say(line)
    return 0


COMMANDS = {
    "train": _train,
    "cv": _cv,
    "report": _report,
    "runs": _runs,
    "show": _show,
    "svm": _svm,
    "plot": _plot,
    "predict": _predict,
}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (Jupyter and pytest swap it), not what it was at set-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging(quiet: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("aqtrack")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
