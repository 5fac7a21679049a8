"""User data files (.npz, .csv, .parquet) -> validated `ActionQualityData`.

Every problem becomes a one-line `DataError` naming the file, what is wrong and how to fix it; when several
checks fail at once they are reported together so the user can fix the file in one go.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from aqtrack.data import ActionQualityData
from aqtrack.errors import DataError

log = logging.getLogger(__name__)

NPZ_KEYS = ("X", "y", "split", "class_names")
REQUIRED_COLUMNS = ("sample_id", "frame", "label")
OPTIONAL_COLUMNS = ("split",)
CHANNEL_PREFIX = "ch_"
SPLITS = ("train", "val")
_SHOW = 5  # how many offending values/samples a message lists before "..."

_NPZ_HINT = "save X float [N, T, C] and y int [N] with numpy.savez"
_TABLE_HINT = (
    f"expected columns {', '.join(REQUIRED_COLUMNS)}, optional split, "
    f"and one or more channel columns named {CHANNEL_PREFIX}<name>"
)


@dataclass
class _Raw:
    """Arrays as read from a file, before validation; `sample_ids` only names samples in messages."""

    x: np.ndarray
    y: np.ndarray
    split: np.ndarray | None = None
    class_names: np.ndarray | None = None
    sample_ids: np.ndarray | None = None


def load_file(path: Path, *, val_fraction: float, seed: int) -> ActionQualityData:
    """Load a .npz or long-format .csv/.parquet file; files without a `split` get a seeded stratified one."""
    path = Path(path)
    if not 0.0 < val_fraction < 1.0:
        _fail(path, [f"val_fraction must be in (0, 1), got {val_fraction}; use e.g. 0.2"])
    suffix = path.suffix.lower()
    if suffix == ".npz":
        raw = _load_npz(path)
    elif suffix in (".csv", ".parquet"):
        raw = _table_to_raw(path, _read_table(path))
    else:
        _fail(path, [f"unsupported file type {path.suffix!r}; use a .npz, .csv or .parquet file"])
    x, y, split, class_names = _validate(path, raw)
    if split is None:
        is_val = _stratified_val_mask(y, len(class_names), val_fraction, seed)
        if not is_val.any():
            _fail(path, ["too few samples to make a validation split; give each class at least 2 samples"])
    else:
        is_val = split == "val"
    log.info("loaded %s: %d train, %d val samples", path, int((~is_val).sum()), int(is_val.sum()))
    return ActionQualityData(
        x_train=np.ascontiguousarray(x[~is_val]),
        y_train=y[~is_val],
        x_val=np.ascontiguousarray(x[is_val]),
        y_val=y[is_val],
        class_names=class_names,
        source=str(path),
    )


def _fail(path: Path, problems: list[str]) -> NoReturn:
    # One line no matter what: column names or exception texts may carry newlines.
    message = f"{path}: " + " | ".join(problems)
    raise DataError(" ".join(message.splitlines()))


def _plain(value):
    # numpy scalars repr as np.str_('x'); users should see 'x'.
    return value.item() if isinstance(value, np.generic) else value


def _show(values) -> str:
    values = list(values)
    shown = ", ".join(repr(_plain(v)) for v in values[:_SHOW])
    return shown + (", ..." if len(values) > _SHOW else "")


def _where(i: int, sample_ids: np.ndarray | None) -> str:
    return f"sample {i}" if sample_ids is None else f"sample_id {_plain(sample_ids[i])!r}"


# --- .npz --------------------------------------------------------------------------------------------


def _load_npz(path: Path) -> _Raw:
    # Open the file ourselves: np.load leaks its handle when a truncated zip fails to parse.
    with path.open("rb") as f:
        try:
            archive = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            _fail(path, [f"not a readable .npz archive ({exc}); {_NPZ_HINT}"])
        if not isinstance(archive, np.lib.npyio.NpzFile):
            _fail(path, [f"holds a single .npy array, not an .npz archive; {_NPZ_HINT}"])
        with archive:
            arrays = _read_npz_arrays(path, archive)
    return _Raw(arrays["X"], arrays["y"], arrays.get("split"), arrays.get("class_names"))


def _read_npz_arrays(path: Path, archive: np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    missing = [key for key in ("X", "y") if key not in archive.files]
    if missing:
        _fail(path, [f"missing array(s) {', '.join(missing)} (found {_show(archive.files)}); {_NPZ_HINT}"])
    unknown = sorted(set(archive.files) - set(NPZ_KEYS))
    if unknown:
        log.warning("%s: ignoring unknown arrays %s", path, unknown)
    return {key: _read_npz_array(path, archive, key) for key in NPZ_KEYS if key in archive.files}


def _read_npz_array(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        value = archive[key]
    # ValueError: an object array, which needs pickle (never allowed here).
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        _fail(
            path, [f"array {key!r} cannot be read ({exc}); save plain numeric/string arrays with numpy.savez"]
        )
    if not isinstance(value, np.ndarray):  # NpzFile hands back raw bytes for members that are not .npy
        _fail(path, [f"array {key!r} cannot be read (not .npy data); save the arrays with numpy.savez"])
    return value


# --- .csv / .parquet (long format: one row per sample and frame) -------------------------------------


def _read_table(path: Path):
    import pandas as pd  # slow import, only paid when a table is loaded

    try:
        df = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        _fail(path, [f"file is empty; {_TABLE_HINT}"])
    except (ValueError, OSError) as exc:  # parser errors, bad encodings and pyarrow errors all land here
        _fail(path, [f"cannot read file ({exc}); {_TABLE_HINT}"])
    df.columns = [str(c) for c in df.columns]
    return df


def _column_problems(df) -> list[str]:
    import pandas as pd

    columns = list(df.columns)
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        problems.append(f"missing required column(s) {_show(missing)}; {_TABLE_HINT}")
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    unknown = [c for c in columns if c not in known and not c.startswith(CHANNEL_PREFIX)]
    if unknown:
        problems.append(f"unknown column(s) {_show(unknown)}; {_TABLE_HINT}")
    if df.empty:  # nothing else to check, and empty columns read as non-numeric
        return [*problems, f"file has no rows (zero samples); {_TABLE_HINT}"]
    channels = [c for c in columns if c.startswith(CHANNEL_PREFIX)]
    if not channels:
        problems.append(f"no channel columns; {_TABLE_HINT}")
    non_numeric = [c for c in channels if not _is_numeric(df[c])]
    if non_numeric:
        problems.append(f"non-numeric values in channel column(s) {_show(non_numeric)}; use numbers only")
    for c in [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in columns]:
        blank = np.flatnonzero(pd.isna(df[c]).to_numpy())
        if len(blank):
            problems.append(
                f"column {c!r} has {len(blank)} missing value(s) (first at row {blank[0]}); fill them"
            )
    if "frame" in columns and not _is_integral(df["frame"]):
        problems.append("column 'frame' must hold integers 0..T-1; renumber the frames")
    return problems


def _is_numeric(column) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _is_integral(column) -> bool:
    if not _is_numeric(column):
        return False
    values = column.dropna().to_numpy(dtype=np.float64)
    return bool(np.all(values == np.round(values)))


def _table_to_raw(path: Path, df) -> _Raw:
    problems = _column_problems(df)
    if problems:
        _fail(path, problems)
    try:
        df = df.sort_values(["sample_id", "frame"], kind="stable", ignore_index=True)
    except TypeError as exc:
        _fail(path, [f"sample_id values cannot be sorted ({exc}); use one type (all numbers or all strings)"])
    groups = df.groupby("sample_id", sort=True)
    per_sample = ["label", *(["split"] if "split" in df.columns else [])]
    problems = _frame_problems(df, groups)
    for column in per_sample:
        varying = groups[column].nunique(dropna=False)
        varying = varying[varying > 1].index
        if len(varying):
            problems.append(
                f"{column} changes within sample_id(s) {_show(varying)}; use one {column} per sample"
            )
    if problems:
        _fail(path, problems)
    channels = [c for c in df.columns if c.startswith(CHANNEL_PREFIX)]
    n, t = groups.ngroups, len(df) // groups.ngroups
    first = groups.first()
    label = first["label"]
    return _Raw(
        x=df[channels].to_numpy(dtype=np.float64).reshape(n, t, len(channels)),
        y=label.to_numpy(dtype=np.float64) if _is_numeric(label) else label.to_numpy(),
        split=first["split"].to_numpy().astype(str) if "split" in df.columns else None,
        sample_ids=first.index.to_numpy(),
    )


def _frame_problems(df, groups) -> list[str]:
    # After sorting, a well-formed sample numbers its rows 0, 1, ..., T-1 exactly.
    expected = groups.cumcount().to_numpy()
    wrong = df["frame"].to_numpy(dtype=np.float64) != expected
    lengths = groups.size()
    bad = df.loc[wrong, "sample_id"].unique()
    problems = []
    if len(bad):
        problems.append(
            f"sample_id(s) {_show(bad)} have missing or duplicate frames; "
            "each sample needs frames 0..T-1 exactly once"
        )
    if lengths.nunique() > 1:
        example: dict[int, object] = {}  # one sample_id per distinct length
        for sample_id, n in lengths.items():
            example.setdefault(int(n), sample_id)
        found = ", ".join(f"{n} for sample_id {_plain(sid)!r}" for n, sid in sorted(example.items())[:_SHOW])
        problems.append(f"samples have different numbers of frames ({found}); give every sample the same T")
    return problems


# --- validation shared by all formats ----------------------------------------------------------------


def _validate(path: Path, raw: _Raw) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[str, ...]]:
    problems = _x_problems(raw.x, raw.sample_ids)
    problems += _y_problems(raw.y, raw.sample_ids)
    n = raw.x.shape[0] if raw.x.ndim == 3 else None
    if n is not None and raw.y.ndim == 1 and len(raw.y) != n:
        problems.append(f"X has {n} samples but y has {len(raw.y)}; give one label per sample")
    if raw.split is not None:
        problems += _split_problems(raw.split, n)
    if problems:
        _fail(path, problems)
    y = raw.y.astype(np.int64)
    class_names = _class_names(path, raw.class_names, y)
    split = None if raw.split is None else raw.split.astype(str)
    return _as_float32(raw.x), y, split, class_names


def _as_float32(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which _x_problems reports
        return np.ascontiguousarray(x, dtype=np.float32)


def _x_problems(x: np.ndarray, sample_ids: np.ndarray | None) -> list[str]:
    if x.dtype.kind not in "iuf":
        return [f"X must be numeric, got dtype {x.dtype}; store the motion data as floats"]
    if x.ndim != 3:
        return [f"X has shape {x.shape}; expected a 3-D array [N samples, T frames, C channels]"]
    n, t, c = x.shape
    if n == 0:
        return ["no samples (X is empty); add at least one sample per class"]
    problems = []
    if t < 2 or c < 1:
        problems.append(f"X has T={t} frames and C={c} channels; need T >= 2 and C >= 1")
    # Check after the float32 cast: huge float64 values overflow to inf there.
    finite = np.isfinite(_as_float32(x)).reshape(n, -1)
    if not finite.all():
        first = int(np.argmin(finite.all(axis=1)))
        problems.append(
            f"X has {int((~finite).sum())} NaN/Inf value(s), first in {_where(first, sample_ids)}; "
            "fill or drop those samples"
        )
    return problems


def _y_problems(y: np.ndarray, sample_ids: np.ndarray | None) -> list[str]:
    if y.ndim != 1:
        return [f"y has shape {y.shape}; expected a 1-D array of integer class labels [N]"]
    if y.dtype.kind not in "iuf":
        found = f"found {_plain(y[0])!r} in {_where(0, sample_ids)}" if len(y) else f"got dtype {y.dtype}"
        return [f"labels must be integers, {found}; use class indices 0..K-1"]
    if y.dtype.kind == "f":
        not_int = ~np.isfinite(y) | (y != np.round(y))
        if not_int.any():
            i = int(np.argmax(not_int))
            return [f"labels must be integers, found {float(y[i])} in {_where(i, sample_ids)}; use 0..K-1"]
    negative = np.flatnonzero(y < 0)
    if len(negative):
        i = int(negative[0])
        return [
            f"{len(negative)} negative label(s), first {int(y[i])} in {_where(i, sample_ids)}; use 0..K-1"
        ]
    return []


def _split_problems(split: np.ndarray, n: int | None) -> list[str]:
    if split.ndim != 1 or (n is not None and len(split) != n):
        return [f"split has shape {split.shape} but there are {n} samples; give one 'train'/'val' per sample"]
    values = split.astype(str)
    invalid = sorted(set(values) - set(SPLITS))
    if invalid:
        return [f"split values must be 'train' or 'val', found {_show(invalid)}; fix or drop the split"]
    empty = [name for name in SPLITS if not (values == name).any()]
    if empty:
        return [f"split has no {' or '.join(empty)} samples; mark some samples as each, or drop the split"]
    return []


def _class_names(path: Path, names: np.ndarray | None, y: np.ndarray) -> tuple[str, ...]:
    if names is None:
        num_classes = int(y.max()) + 1
        if num_classes < 2:
            _fail(
                path, ["only one class (all labels are 0); a classifier needs labels from at least 2 classes"]
            )
        return tuple(f"class_{i}" for i in range(num_classes))
    if names.ndim != 1 or names.dtype.kind not in "US":
        _fail(path, [f"class_names must be a 1-D array of strings, got {names.dtype} {names.shape}; fix it"])
    names = names.astype(str)
    problems = []
    if len(names) < 2:
        problems.append(f"{len(names)} class_names given; a classifier needs at least 2 classes")
    if len(set(names)) != len(names):
        problems.append(f"class_names has duplicates ({_show(names)}); make them unique")
    out_of_range = np.flatnonzero(y >= len(names))
    if len(out_of_range):
        i = int(out_of_range[0])
        problems.append(
            f"label {y[i]} (sample {i}) is out of range for {len(names)} class_names; "
            "use labels 0..len(class_names)-1 or add the missing names"
        )
    if problems:
        _fail(path, problems)
    return tuple(names.tolist())


def _stratified_val_mask(y: np.ndarray, num_classes: int, val_fraction: float, seed: int) -> np.ndarray:
    """Per class, a seeded `round(val_fraction * n)` samples (at least 1, never all) go to validation."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(y), dtype=bool)
    for k in range(num_classes):
        members = np.flatnonzero(y == k)
        if len(members) < 2:
            continue  # a lone sample has to stay in train
        n_val = min(max(round(val_fraction * len(members)), 1), len(members) - 1)
        is_val[rng.permutation(members)[:n_val]] = True
    return is_val
