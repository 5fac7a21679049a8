"""What a run exports to MLflow besides metrics and checkpoints: models, datasets and figures.

With `tracking.py`, the only module that imports mlflow (lazily: `aqtrack --help` stays light).

Models are MLflow 3 LoggedModels linked to their run, so `runs:/<run id>/model` and
`runs:/<run id>/svm` load them. Each is created, uploaded, then marked READY. A model a killed process
left PENDING is deleted before it is logged again, and a READY one for the same best checkpoint is not
logged twice.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aqtrack.config import MISSING_POLICIES
from aqtrack.data.dataset import SYNTHETIC, ActionQualityData
from aqtrack.errors import ModelError, first_line
from aqtrack.names import NETWORK_MODEL, SVM_MODEL, TAG_BEST_EPOCH

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel

log = logging.getLogger(__name__)

# pt2 (torch.export) rather than pickle: the archive holds the weights as raw bytes, so aqtrack reads them
# without unpickling anything (`read_pt2_weights`); other readers need no aqtrack installed.
NETWORK_FORMAT = "pt2"
NETWORK_INPUT = (
    "float32 [B, T, C] raw joint angles, any B and T; a sequence shorter than T ends in NaN frames "
    "(its length: up to its last frame with any non-NaN value)"
)
READY, PENDING = "READY", "PENDING"
TRAINING, VALIDATION, TESTING = "training", "validation", "testing"  # dataset contexts, as MLflow names them
AMBIGUOUS_SOURCE_WARNING = "The specified dataset source can be interpreted in multiple ways"


@dataclass(frozen=True)
class ModelRecord:
    """A READY logged model of a run."""

    model_id: str
    tags: dict[str, str]


def _requirements(*packages: str) -> list[str]:
    """Pinned to what is installed: passed explicitly, MLflow would otherwise spend seconds inferring them."""
    pinned = []
    for package in packages:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pinned.append(package)
    return pinned


def ready_models(client: MlflowClient, run_id: str, name: str) -> list[ModelRecord]:
    """The run's READY models called `name`, newest first; PENDING ones (a process died while
    uploading them) are deleted, so `runs:/<run id>/<name>` never resolves to a half-uploaded model."""
    experiment_id = client.get_run(run_id).info.experiment_id
    ready = []
    for model in _logged_models(client, experiment_id, name):
        if model.source_run_id != run_id:
            continue
        if str(model.status).endswith(READY):
            ready.append(ModelRecord(model.model_id, dict(model.tags)))
        else:
            log.warning("run %s: deleting model %s (%s): never finished", run_id, model.model_id, name)
            client.delete_logged_model(model.model_id)
    return ready


def run_models(client: MlflowClient, run_id: str) -> list[tuple[str, str, str, str]]:
    """(name, model id, status, best epoch) of every model the run logged, oldest first; read only
    (unlike `ready_models`, it leaves a PENDING model alone: its upload may be under way)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = [m for name in (NETWORK_MODEL, SVM_MODEL) for m in _logged_models(client, experiment_id, name)]
    mine = sorted((m for m in found if m.source_run_id == run_id), key=lambda m: m.creation_timestamp)
    status = lambda m: str(m.status).rpartition(".")[2]  # noqa: E731  # LoggedModelStatus.READY -> READY
    return [(m.name, m.model_id, status(m), m.tags.get(TAG_BEST_EPOCH, "?")) for m in mine]


def _logged_models(client: MlflowClient, experiment_id: str, name: str) -> list[LoggedModel]:
    models, token = [], None
    while True:
        page = client.search_logged_models([experiment_id], f"name = '{name}'", page_token=token)
        models += list(page)
        token = page.token
        if not token:
            return models


@dataclass(frozen=True)
class NetworkInfo:
    """What a user of the logged network needs beside its weights (its MLflow model metadata): the
    classes in the order of its logits, the input channels in their order, and the missing-value policy
    its training data went through (`aqtrack predict` applies the same to new recordings)."""

    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    missing: str

    def metadata(self) -> dict[str, Any]:
        return {
            "input": NETWORK_INPUT,
            "class_names": list(self.class_names),
            "channel_names": list(self.channel_names),
            "missing": self.missing,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> NetworkInfo | None:
        """What `metadata()` wrote, or None when any of it is absent or malformed (not aqtrack's)."""
        metadata = metadata or {}
        classes, channels = metadata.get("class_names"), metadata.get("channel_names")
        missing = metadata.get("missing")
        if not (
            _strings(classes) and len(classes) >= 2 and _strings(channels) and missing in MISSING_POLICIES
        ):
            return None
        return cls(tuple(classes), tuple(channels), missing)


def _strings(values: Any) -> bool:
    return isinstance(values, list) and bool(values) and all(isinstance(v, str) for v in values)


def log_network(
    client: MlflowClient,
    run_id: str,
    network: Any,
    example: np.ndarray,
    tags: Mapping[str, str],
    about: NetworkInfo,
) -> str:
    """Log the network (eval mode) as the run's `model`: float32 [B, T, C] -> logits [B, num_classes],
    for any B and T, where a sequence shorter than T ends in NaN frames.

    The logged graph is `NanPaddedNet`: it finds each sequence's length from its trailing NaN frames
    and runs the masked network, so a sequence gets the logits it gets alone, however it is padded.
    MLflow exports pt2 with `torch.export.Dim.AUTO` on every -1 dimension of the signature's input
    (mlflow.pytorch has no dynamic-shapes argument): the signature [-1, -1, C] makes batch and frames
    dynamic. `example` [>= 2, T, C] (two rows or more, else the batch is fixed at 1); its second
    sequence is cut short with NaN frames, so the example shows the padding too."""
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from aqtrack.training.model import NanPaddedNet

    mlflow_pytorch = _mlflow_pytorch()
    exported = NanPaddedNet(network).eval()
    example = _mixed_lengths(example)
    with torch.inference_mode():
        logits = exported(torch.from_numpy(example)).numpy()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, example.shape[2]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, logits.shape[1]))]),
    )

    def log(model_id: str) -> None:
        mlflow_pytorch.log_model(
            exported,
            name=NETWORK_MODEL,
            model_id=model_id,
            run_id=run_id,
            signature=signature,
            input_example=example,
            metadata=about.metadata(),
            pip_requirements=_requirements("mlflow", "torch", "numpy"),
            serialization_format=NETWORK_FORMAT,
            validate_serving_input=False,  # loading it back costs ~0.3 s; the tests load and predict
        )

    return _log_model(client, run_id, NETWORK_MODEL, tags, log)


@dataclass(frozen=True)
class LoggedNetwork:
    """A network aqtrack logged, read back: the network (eval mode), what it was trained on, and where
    it comes from (its run, the best epoch it was made from; None when the model does not say)."""

    network: Any  # aqtrack.training.model.ActionQualityNet
    about: NetworkInfo
    run_id: str
    best_epoch: int | None


def load_logged_network(client: MlflowClient, uri: str, tmp: Path) -> LoggedNetwork:
    """The network of a `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `runs:/RUN_ID/model` URI,
    downloaded into `tmp` (read only: nothing is written to the tracking store). Only a network aqtrack
    logged is accepted: its MLflow metadata must hold class_names, channel_names and missing, and its
    pt2 archive the weights of aqtrack's network, which are read without loading the program
    (`read_pt2_weights`). Raises ModelError, one line, for anything else."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from aqtrack.training.model import network_from_state_dict

    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(tmp), tracking_uri=client.tracking_uri
            )
        )
        model = Model.load(str(local))  # the MLmodel file, read with yaml.safe_load
    except (MlflowException, OSError) as e:
        raise ModelError(
            f"{uri}: not found in {client.tracking_uri} ({first_line(e)[:90]}); check the model's name "
            "and version (or alias), or pass a training run id"
        ) from e
    about = NetworkInfo.from_metadata(model.metadata)
    if about is None:
        raise ModelError(
            f"{uri}: not a network logged by aqtrack (its MLflow metadata lacks class_names, "
            "channel_names or missing); score a model `aqtrack train --register NAME` made, or a run id"
        )
    archive = local / "data" / "model.pt2"  # where mlflow.pytorch puts a pt2 network
    if "pytorch" not in model.flavors or not archive.is_file():
        raise ModelError(f"{uri}: holds no pt2 network (data/model.pt2); score a model aqtrack logged")
    try:
        network = network_from_state_dict(_unwrapped(read_pt2_weights(archive)))
    except ValueError as e:
        raise ModelError(
            f"{uri}: its weights do not fit this aqtrack's network ({first_line(e)[:120]}); score it with "
            "the aqtrack version that logged it, or score its run id"
        ) from e
    spec = network.spec
    if (spec.num_classes, spec.in_channels) != (len(about.class_names), len(about.channel_names)):
        raise ModelError(
            f"{uri}: its network has {spec.num_classes} classes and {spec.in_channels} channels, its "
            f"metadata names {len(about.class_names)} and {len(about.channel_names)}; it is damaged"
        )
    return LoggedNetwork(network, about, model.run_id or "?", _best_epoch(client, model))


def _unwrapped(weights: dict[str, Any]) -> dict[str, Any]:
    """NanPaddedNet's state dict -> the ActionQualityNet's inside it (keys without `network.`)."""
    prefix = "network."
    stray = [k for k in weights if not k.startswith(prefix)]
    if stray:
        raise ValueError(f"unexpected weight {stray[0][:40]!r}")
    return {k.removeprefix(prefix): v for k, v in weights.items()}


def _best_epoch(client: MlflowClient, model: Any) -> int | None:
    """The best epoch the logged model was made from (its tag), or None when it does not say."""
    from mlflow.exceptions import MlflowException

    model_id = getattr(model, "model_id", None)
    if not model_id:
        return None
    try:
        tag = client.get_logged_model(model_id).tags.get(TAG_BEST_EPOCH, "")
    except MlflowException:
        return None
    return int(tag) if tag.isdigit() else None


# Reading the pt2 archive ourselves. `mlflow.pytorch.load_model` loads a pt2 network with
# `torch.export.load` (mlflow/pytorch/__init__.py, `_load_model`; mlflow 3.17.2, torch 2.13.0), which can
# run code from the file:
# - pickles: weights and tensor constants marked `use_pickle` are read with torch.load(weights_only=False),
#   custom and opaque constants with torch._C._pickle_load_obj / pickle.loads
#   (torch/export/pt2_archive/_package.py: `_load_state_dict`, `_load_constants`), and the sample inputs
#   fall back to weights_only=False when the safe load fails
#   (torch/_export/serde/serialize.py: `deserialize_torch_artifact`);
# - no pickle needed: every symbolic size in the graph's JSON goes through `sympy.sympify`, which evals
#   it (serialize.py: `GraphModuleDeserializer._parse_sym_expr`), and a node target "torch.<path>" is
#   resolved by getattr from the torch module (`deserialize_operator`), so torch.os.system is reachable.
# MLflow guards only the pickles (`_validate_pt2_archive_is_pickle_free`, which accepts any JSON record),
# and not at all when MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set. A pickle-free archive whose JSON holds
# a crafted size expression ran its code on both torch.export.load and mlflow.pytorch.load_model (tried
# with this aqtrack's own exported network). So the program is never loaded here: the network is
# aqtrack's own class, and only the weights are taken from the archive, as raw little-endian bytes that
# its JSON weights config describes. A weight stored any other way is refused.
PT2_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"  # under the archive's top folder
PT2_DTYPES = {7: "float32", 5: "int64"}  # torch._export.serde.schema.ScalarType: all an aqtrack net holds
_PT2_WEIGHT_FILE = re.compile(r"weight_\d+")


def read_pt2_weights(path: Path) -> dict[str, Any]:
    """The weights (parameters and buffers) of the program in a torch.export archive, by name, as CPU
    tensors. Nothing in the file is unpickled, evaluated or run: a JSON config and raw bytes are read.
    Raises ValueError (one line) for an archive that stores them any other way, or is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            configs = [n for n in names if n.endswith("/" + PT2_WEIGHTS_CONFIG)]
            if len(configs) != 1:
                raise ValueError(f"{len(configs)} weights configs ({PT2_WEIGHTS_CONFIG}), expected 1")
            top = configs[0][: -len(PT2_WEIGHTS_CONFIG)]  # "model/"
            byteorder = archive.read(top + "byteorder").decode() if top + "byteorder" in names else "little"
            if byteorder.strip() != "little" or sys.byteorder != "little":
                raise ValueError(
                    f"weights stored {byteorder.strip()!r}-endian on a {sys.byteorder}-endian machine"
                )
            entries = json.loads(archive.read(configs[0]))["config"]
            folder = top + PT2_WEIGHTS_CONFIG.rpartition("/")[0] + "/"
            return {name: _raw_tensor(archive, folder, name, entry) for name, entry in entries.items()}
    except (OSError, zipfile.BadZipFile, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a readable pt2 archive ({type(e).__name__}: {first_line(e)[:80]})") from e


def _raw_tensor(archive: zipfile.ZipFile, folder: str, name: str, entry: dict[str, Any]) -> Any:
    """One weight: the raw bytes of `folder/<path_name>` viewed as its config says (dtype, sizes,
    strides, storage offset), copied."""
    import torch

    meta = entry["tensor_meta"]
    if entry.get("use_pickle") is not False or not _PT2_WEIGHT_FILE.fullmatch(str(entry["path_name"])):
        raise ValueError(f"weight {name[:40]!r} is not stored as raw bytes")
    if meta["dtype"] not in PT2_DTYPES:
        raise ValueError(f"weight {name[:40]!r} has dtype code {meta['dtype']!r}, not float32 or int64")
    dtype = getattr(torch, PT2_DTYPES[meta["dtype"]])
    sizes, strides = [_as_int(v) for v in meta["sizes"]], [_as_int(v) for v in meta["strides"]]
    data = bytearray(archive.read(folder + entry["path_name"]))  # writable: torch.frombuffer wants it so
    flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
    try:  # as_strided checks the view against the storage's size
        return torch.as_strided(flat, sizes, strides, _as_int(meta["storage_offset"])).clone()
    except RuntimeError as e:
        raise ValueError(f"weight {name[:40]!r} does not fit its bytes") from e


def _as_int(value: dict[str, Any]) -> int:
    """A static size ({"as_int": n}); a symbolic one ({"as_expr": ...}) is never evaluated."""
    number = value["as_int"]
    if type(number) is not int:
        raise TypeError(f"size {number!r} is not an integer")
    return number


def _mixed_lengths(example: np.ndarray) -> np.ndarray:
    """A float32 copy of `example` whose second sequence is at most half as long as the first (NaN
    after that), unless the sequences already differ in length."""
    from aqtrack.data.dataset import lengths_of

    example = np.array(example, dtype=np.float32)
    lengths = lengths_of(example)
    if len(example) > 1 and (lengths == lengths[0]).all():
        example[1, max(1, lengths[1] // 2) :] = np.nan
    return example


def _mlflow_pytorch():
    """`mlflow.pytorch`, imported without Lightning. Where pytorch_lightning is installed, importing
    mlflow.pytorch imports it too (~4 s, and it calls logging.basicConfig) for Lightning autologging,
    which aqtrack never uses; hiding it makes that import fail the way mlflow.pytorch expects when
    Lightning is absent. Only for this one import: `mlflow.pytorch.autolog()` still finds Lightning."""
    if "mlflow.pytorch" not in sys.modules and "pytorch_lightning" not in sys.modules:
        sys.modules["pytorch_lightning"] = None  # type: ignore[assignment]  # import -> ImportError
        try:
            import mlflow.pytorch
        finally:
            del sys.modules["pytorch_lightning"]
    import mlflow.pytorch

    return mlflow.pytorch


def log_svm(
    client: MlflowClient, run_id: str, pipeline: Any, example: np.ndarray, tags: Mapping[str, str]
) -> str:
    """Log the fitted scaling + SVC pipeline as the run's `svm`: signature [N, D] features -> class."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    def log(model_id: str) -> None:
        mlflow.sklearn.log_model(
            pipeline,
            name=SVM_MODEL,
            model_id=model_id,
            run_id=run_id,
            signature=infer_signature(example, pipeline.predict(example)),
            input_example=example,
            pip_requirements=_requirements("mlflow", "scikit-learn", "numpy"),
        )

    return _log_model(client, run_id, SVM_MODEL, tags, log)


def _log_model(client: MlflowClient, run_id: str, name: str, tags: Mapping[str, str], log_into) -> str:
    # The LoggedModel is created here, in the run's experiment: MLflow would put it in the active (or
    # default) experiment, where `runs:/<run id>/<name>` does not look.
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=dict(tags))
    log_into(model.model_id)
    client.finalize_logged_model(model.model_id, READY)
    return model.model_id


def register(client: MlflowClient, run_id: str, model_id: str, name: str) -> int:
    """Register the logged model under `name` (once: a version of it already there is reused)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for existing in client.search_model_versions(f"name = '{name}'"):
        if existing.model_id == model_id or existing.source == f"models:/{model_id}":
            return int(existing.version)
    source = f"models:/{model_id}"
    created = client.create_model_version(name, source, run_id=run_id, model_id=model_id)
    log.info("run %s: registered its model as %s version %s", run_id, name, created.version)
    return int(created.version)


def log_datasets(client: MlflowClient, run_id: str, data: ActionQualityData, seed: int) -> None:
    """Log the train, validation and test splits as the run's dataset inputs (name, source, digest,
    profile)."""
    import mlflow.data
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    base = SYNTHETIC if data.source == SYNTHETIC else _stem(data.source)
    have = {(d.dataset.name, d.dataset.digest) for d in client.get_run(run_id).inputs.dataset_inputs}
    inputs = []
    contexts = {"train": TRAINING, "val": VALIDATION, "test": TESTING}
    for split, part in data.splits.items():
        x, y, context = part.x, part.y, contexts[split]
        if data.source == SYNTHETIC:
            source = CodeDatasetSource(
                {"generator": "aqtrack.data.synthetic", "seed": seed, "split": split, "samples": len(y)}
            )
        else:
            source = str(Path(data.source).resolve())
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice (for "" and "file:" paths), then warns that
            # it cannot tell the two identical candidates apart.
            warnings.filterwarnings("ignore", message=AMBIGUOUS_SOURCE_WARNING)
            dataset = mlflow.data.from_numpy(x, targets=y, source=source, name=f"{base}-{split}")
        if (dataset.name, dataset.digest) not in have:
            tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def _stem(path: str) -> str:
    return Path(path).stem or path


def log_table(client: MlflowClient, run_id: str, table: dict[str, list], artifact_file: str) -> None:
    """A table (columns of equal length) as an MLflow table artifact, shown in the run's Artifacts tab.
    MLflow appends the rows to the table when the run has it already."""
    client.log_table(run_id, data=table, artifact_file=artifact_file)


def log_png(client: MlflowClient, run_id: str, path: Path, artifact_file: str) -> None:
    """A figure already saved as `path` (PNG), as the run's artifact `artifact_file` (plots/...)."""
    directory, _, name = artifact_file.rpartition("/")
    if name != path.name:
        raise ValueError(f"{path} must be named {name} to be logged as {artifact_file}")
    client.log_artifact(run_id, str(path), directory or None)


def read_table(client: MlflowClient, run_id: str, artifact_file: str, tmp: Path) -> dict[str, list] | None:
    """A table `log_table` logged, as {column: values}; None when the run does not have it."""
    directory, _, name = artifact_file.rpartition("/")
    if name not in {f.path.rpartition("/")[2] for f in client.list_artifacts(run_id, directory or None)}:
        return None
    path = client.download_artifacts(run_id, artifact_file, str(tmp))
    table = json.loads(Path(path).read_text())  # pandas' "split" layout: columns, data (rows)
    return {c: [row[i] for row in table["data"]] for i, c in enumerate(table["columns"])}
