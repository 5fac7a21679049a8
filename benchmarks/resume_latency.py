"""How long from `--resume RUN_ID` to the first training step? Default model and a ~50 MB checkpoint.

For each store (embedded sqlite, and a real `mlflow server` on 127.0.0.1 with proxied artifacts) it
makes two one-epoch runs with `aqtrack.train`: the default model and data, and a wide model
(`--hidden 640`, 64 + 32 sequences so that making it stays cheap) whose checkpoint (weights + AdamW
state) is ~50 MB. Then, alternating the two:

  in-process  `aqtrack.train(resume=RUN_ID, rounds=2)` in this process, after imports (and after one
              warm-up resume), timed to the first training forward pass (all the resume work: connect,
              look up the run, download and load last.pt, build and restore, reopen the run, params,
              tags, history check) and to the first optimizer step (plus one batch of compute). A
              global optimizer-step hook then stops the run, so every resume starts from the same
              checkpoint; aqtrack marks that run FAILED, which does not matter here.
  CLI         `aqtrack train --resume RUN_ID --rounds N -q` as a subprocess: the full wall time of the
              real command, interpreter start, imports and one epoch of training included (each call
              trains one more epoch of its own run).

It prints medians, ratios (resume / one epoch of the default model, 50 MB / default, HTTP / sqlite)
against the target (default resume < 1 s after imports), where the resume time goes (every MLflow
client call and the local steps, timed inside the same resumes), and where a fresh CLI process spends
its time before that (interpreter, torch + aqtrack imports, mlflow import, connecting to the store).

    python benchmarks/resume_latency.py [--pairs 5] [--hidden 640] [--quick]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _harness as h
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook


class _FirstStep(Exception):
    """Raised at the first optimizer step to end a measured resume there."""


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--hidden", type=int, default=640, help="width of the large model (640: ~50 MB)")
    args = p.parse_args()
    h.set_threads(args.threads)
    base = {"rounds": 1, "epochs_per_round": 1, "experiment": "bench", "svm": False}  # to the first step only
    variants = {"default": base, "large": {**base, "hidden": args.hidden, "n_train": 64, "n_val": 32}}
    if args.quick:
        args.pairs = 1
        variants = {
            "default": {**base, "n_train": 64, "n_val": 32},
            "large": {**base, "hidden": 16, "n_train": 64, "n_val": 32},
        }
    with h.scratch("resume") as tmp:
        epoch_s = one_epoch_seconds(variants["default"], repeats=1 if args.quick else 5)
        results = {}
        results["sqlite"] = measure(h.sqlite_uri(tmp), variants, args.pairs, tmp / "sqlite")
        with h.mlflow_server(tmp / "server") as url:
            results["http"] = measure(url, variants, args.pairs, tmp / "http")
    summarise(results, epoch_s)


class Probe:
    """Times one resume: a global forward hook notes the first training forward, a global
    optimizer-step hook notes the first step and stops the run. MLflow calls and the pipeline's local
    steps are timed into `spent[variant]`."""

    def __init__(self) -> None:
        self.spent: dict[str, h.Spent] = {}
        self.current = h.Spent()
        self._patch()

    def _patch(self) -> None:
        from aqtrack.jobs import pipeline
        from aqtrack.tracking import store

        connect = store.connect
        store.connect = lambda **kw: h.TimedClient(self.wrap("mlflow.connect()", connect)(**kw), self)
        for name in ("find_checkpoint", "load_configured", "build_trainer", "restore"):
            setattr(pipeline, name, self.wrap(f"local: {name}", getattr(pipeline, name)))

    def wrap(self, key, fn):
        """`fn` timed into whichever `Spent` is current when it is called."""
        return lambda *args, **kwargs: self.current.wrap(key, fn)(*args, **kwargs)

    def resume(self, run_id: str, variant: str) -> tuple[float, float]:
        """(seconds to the first training forward, seconds to the first optimizer step)."""
        import aqtrack

        self.current = self.spent.setdefault(variant, h.Spent())
        marks: dict[str, float] = {}

        def on_forward(module, args):
            if module.training:
                marks.setdefault("forward", time.perf_counter())

        def on_step(optimizer, args, kwargs):
            marks["step"] = time.perf_counter()
            self.current = h.Spent()  # not counted: aqtrack closing the stopped run
            raise _FirstStep

        hooks = [
            torch.nn.modules.module.register_module_forward_pre_hook(on_forward),
            register_optimizer_step_pre_hook(on_step),
        ]
        start = time.perf_counter()
        try:
            aqtrack.train(resume=run_id, rounds=2)
        except _FirstStep:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        return marks["forward"] - start, marks["step"] - start


def one_epoch_seconds(settings: dict, repeats: int) -> float:
    """Median time of one default epoch (train_one_epoch + evaluate), for the resume/epoch ratio."""
    import statistics

    from aqtrack.config import Config
    from aqtrack.data.dataset import load_configured
    from aqtrack.training.loop import build_trainer, evaluate, train_one_epoch

    cfg = Config.from_dict({k: v for k, v in settings.items() if k != "experiment"})
    trainer = build_trainer(cfg, load_configured(cfg.data), torch.device("cpu"))
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        train_one_epoch(trainer)
        evaluate(trainer.model, trainer.val_loader, trainer.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure(uri: str, variants: dict[str, dict], pairs: int, out: Path) -> dict:
    import aqtrack

    os.environ["MLFLOW_TRACKING_URI"] = uri
    runs, cli_runs, size_mb = {}, {}, {}
    for name, settings in variants.items():
        out_dir = str(out / name)
        runs[name] = aqtrack.train(**settings, output_dir=out_dir).run_id
        cli_runs[name] = aqtrack.train(**settings, output_dir=out_dir).run_id
        size_mb[name] = (out / name / runs[name] / "checkpoints" / "last.pt").stat().st_size / 1e6
    probe = Probe()
    marks: dict[str, tuple[float, float]] = {}

    def in_process(name: str) -> float:
        marks[name] = probe.resume(runs[name], name)
        return marks[name][0]

    rounds = {name: 1 for name in variants}

    def cli(name: str) -> float:
        rounds[name] += 1
        command = [shutil.which("aqtrack", path=str(Path(sys.executable).parent)) or "aqtrack"]
        command += ["train", "--resume", cli_runs[name], "--rounds", str(rounds[name]), "-q"]
        command += ["--output-dir", str(out / f"cli-{name}")]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=out)
        return time.perf_counter() - start

    for name in variants:  # warm-up: MLflow imports, first-call allocations
        in_process(name)
    probe.spent.clear()  # keep the measured resumes only
    steps: dict[str, list[float]] = {name: [] for name in variants}

    def timed(name: str):
        def run() -> float:
            seconds = in_process(name)
            steps[name].append(marks[name][1])
            return seconds

        return run

    rows = h.alternate({name: timed(name) for name in variants}, pairs)
    cli_rows = h.alternate({f"cli {name}": (lambda name=name: cli(name)) for name in variants}, pairs)
    startup = h.alternate(
        {step: (lambda c=code: _python(c, out)) for step, code in CLI_STARTUP.items()}, pairs
    )
    return {
        "rows": rows,
        "steps": steps,
        "cli": cli_rows,
        "startup": startup,
        "spent": probe.spent,
        "pairs": pairs,
        "mb": size_mb,
    }


# Where a fresh `aqtrack train` process spends its time before resuming: cumulative steps, each a fresh
# interpreter (MLFLOW_TRACKING_URI is the store being measured).
CLI_STARTUP = {
    "python -c pass": "pass",
    "import aqtrack.jobs.pipeline (torch)": "import aqtrack.jobs.pipeline",
    "+ import mlflow": "import aqtrack.jobs.pipeline, mlflow",
    "+ store.connect()": "import aqtrack.jobs.pipeline; from aqtrack.tracking import store; store.connect()",
}


def _python(code: str, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=cwd)
    return time.perf_counter() - start


def summarise(results: dict, epoch_s: float) -> None:
    import statistics

    print(f"\none default epoch (train + evaluate), median: {epoch_s * 1000:.0f} ms")
    forward, figures = {}, {}
    for store, r in results.items():
        rows, steps = r["rows"], r["steps"]
        forward[store] = h.median(rows, "default")
        print(
            f"\n[{store}] {r['pairs']} alternating pairs; checkpoints "
            + ", ".join(f"{k} {v:.1f} MB" for k, v in r["mb"].items())
        )
        for name in rows[0]:
            print(
                f"[{store}] {name:<7}: to first training forward {h.median(rows, name) * 1000:6.0f} ms, "
                f"to first optimizer step {statistics.median(steps[name]) * 1000:6.0f} ms, "
                f"CLI wall (start to exit, one epoch trained) {h.median(r['cli'], 'cli ' + name):5.2f} s"
            )
        print(f"[{store}] a fresh process before any resume work (medians, cumulative):")
        for step in CLI_STARTUP:
            print(f"  {step:<34} {h.median(r['startup'], step):5.2f} s")
        target = "met" if forward[store] < 1.0 else "NOT met"
        print(f"[{store}] default resume < 1 s after imports: {target}")
        store_figures = {
            f"{store}_resume_ms": forward[store] * 1000,
            f"{store}_resume_over_epoch": forward[store] / epoch_s,
            f"{store}_large_over_default": h.median_ratio(rows, "large", "default"),
            f"{store}_cli_s": h.median(r["cli"], "cli default"),
            f"{store}_cli_large_over_default": h.median_ratio(r["cli"], "cli large", "cli default"),
        }
        figures |= store_figures
        print(f"[{store}] default resume / one epoch: {store_figures[f'{store}_resume_over_epoch']:.2f}x")
        print(f"[{store}] large / default resume: {store_figures[f'{store}_large_over_default']:.2f}x")
        print(f"[{store}] CLI large / CLI default: {store_figures[f'{store}_cli_large_over_default']:.2f}x")
        for name, spent in r["spent"].items():
            print(f"[{store}] where the {name} resume's time goes (mean over {r['pairs']} resumes):")
            for line in h.breakdown(spent, r["pairs"], "resume"):
                print(line)
    if len(forward) == 2:
        figures["http_over_sqlite"] = forward["http"] / forward["sqlite"]
        print(f"\ndefault resume, HTTP / sqlite: {figures['http_over_sqlite']:.2f}x")
    h.result(**figures, epoch_ms=epoch_s * 1000)


if __name__ == "__main__":
    main()
