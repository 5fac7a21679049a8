"""`aqtrack svm RUN_ID` / `aqtrack.fit_svm`: refit a finished run's SVM stage with another C or kernel,
as a run of its own nested under the training run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aqtrack import names
from aqtrack.config import Config, SvmConfig
from aqtrack.data.dataset import load_configured
from aqtrack.errors import ResumeError
from aqtrack.jobs.finish import Outputs, SvmStage, network_of
from aqtrack.names import CHECKPOINT_EPOCH_TAG
from aqtrack.tracking import store
from aqtrack.tracking.resume import find_best

if TYPE_CHECKING:
    from aqtrack.outputs.svm import SvmResult


def fit_svm(run_id: str, *, c: float | None = None, kernel: str | None = None) -> SvmResult:
    """Refit the SVM stage of a finished run, from its verified best checkpoint's features of the run's
    data, as a run of its own nested under it (`mlflow.parentRunId`, tag `aqtrack.refit_of`): the
    refit's params (svm_c, svm_kernel), its `svm_val_acc` / `svm_val_f1` (at step = the training run's
    final epoch) and its `svm` model. The training run itself is left as it is, so each of its metrics
    keeps one point per step and every refit's score says which C and kernel made it.
    `c` and `kernel` default to the run's own settings. Returns the refit's result (`run_id`: the refit).
    """
    client = store.connect(existing=True)
    run = store.get_run(client, run_id, label="svm")
    if run.info.status == "RUNNING":
        raise ResumeError(
            f"svm {run_id}: the run is RUNNING; its own SVM stage runs when it finishes "
            f"(if its process is gone, `aqtrack train --resume {run_id}` finishes it)"
        )
    with tempfile.TemporaryDirectory(prefix="aqtrack-svm-") as tmp:
        best = find_best(client, run_id, None, Path(tmp), label="svm")
    config = Config.from_dict(best.state.config)
    svm = SvmConfig(
        svm=True,
        svm_c=config.svm.svm_c if c is None else c,
        svm_kernel=config.svm.svm_kernel if kernel is None else kernel,
    )
    data = load_configured(config.data)
    features = Outputs.of(network_of(best.state), data).features
    step = int(run.data.tags.get(CHECKPOINT_EPOCH_TAG, best.state.epoch))
    tags = {names.TAG_BEST_EPOCH: str(best.state.epoch)}
    refit = store.create_child_run(
        client,
        run,
        name=f"svm-{svm.svm_kernel}-C{svm.svm_c:g}",
        tags={names.TAG_REFIT_OF: run_id, **tags},
    )
    with store.terminating(client, refit):
        params = {"svm_c": svm.svm_c, "svm_kernel": svm.svm_kernel, "best_epoch": best.state.epoch}
        store.log_params(client, refit, params)
        result = SvmStage(client, refit, step, data, features, tags).fit_and_log(svm, again=True)
    result.refit_of = run_id
    return result
