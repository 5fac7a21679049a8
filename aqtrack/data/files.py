"""User data files (.csv, .parquet, .npz, .ts) -> validated `ActionQualityData`.

A dataset is N samples (recordings), each a sequence of frames with C numeric channels and one class
label. Samples may have different numbers of frames (at least 2 each).

Long table: .csv (comma-separated, with a header row) or .parquet, one row per frame of a sample.
    sample_id   which sample the row belongs to (numbers or strings); samples are ordered by it.
    frame       the frame's integer position in its sample. Numbers may start anywhere (0, 1, ...) and
                rows may come in any order: frames are ordered by `frame`. A skipped number is a
                missing frame (see Missing values); a duplicate or a non-integer frame is an error, and
                so is a sample whose numbers skip more frames than it lists ('frame' counts frames, it is
                not a time). A sample's length is its last frame - first frame + 1.
    label       the sample's class (see Labels); one value per sample, on every row of it.
    ch_<name>   one or more numeric channel columns; channel_names are the <name>s, in file column order.
    split       optional, one per sample: 'train', 'val' or 'test' (see Splits).
    subject     optional, one per sample: who was recorded (see Splits).
    Any other column must hold one value per sample (side, session, camera, ...): it is kept as
    per-sample metadata. A column that changes within a sample (e.g. a per-frame `timestamp`) is
    refused: rename it ch_<name> to use it as a channel, or drop it.
    Every listed frame is real: a row whose channels are NaN is a frame with missing values.
    Empty cells (blank, or NaN/null; parquet's '' too): sample_id and frame are needed on every row. A
    per-sample column is empty for a sample on all its rows or on none: empty on some and set on
    others is refused, naming the sample. Empty for a whole sample, it has no value there ('' as
    metadata, never 'nan'): training refuses a sample without a label, subject or split (counted in
    samples, not rows); scoring takes it (see Recordings to score).

.npz (numpy.savez; pickled object arrays are never loaded):
    X             float [N, T, C]. A sample shorter than T ends in padding: trailing frames that are NaN
                  in every channel (the UCR/tslearn convention); or give
    lengths       optional int [N], each sample's real frames (2..T): frames past it are ignored,
                  whatever they hold. A ragged X (an object array of [T_i, C] arrays) is refused: pad it.
    y             [N] integer class indices or strings (see Labels); NaN (float y) or '' (string y)
                  is a sample without a label, which only scoring accepts.
    class_names   optional [K] strings: the names of classes 0..K-1 (integer y) or the class order
                  (string y); it may list a class that has no sample.
    channel_names optional [C] strings; default ch_0, ch_1, ...
    sample_id     optional [N] unique ids; default 0..N-1.
    split, subject  optional [N], as in long tables.
    Any other 1-D array of N values is per-sample metadata; other arrays are ignored (noted).

.ts (aeon/sktime format; needs the optional extra: pip install 'aqtrack[ts]'): read with aeon's
    `load_from_ts_file`, equal or unequal length. Classes come in the file's @classLabel order with its
    spelling (aeon lowercases labels; the header's case is restored). Channels are ch_0, ch_1, ...;
    trailing all-NaN frames are padding, as in .npz.

Missing values: a NaN inside a sample's real length, or a skipped frame number, is a missing value.
    missing="interpolate" (default): each channel is interpolated linearly over the frame index; values
    before its first / after its last observed value take the nearest observed one. The count is
    logged, noted and recorded in dataset_stats. missing="refuse": the file is refused. A sample with a
    channel that has no value at all is refused either way; so is any infinite value.

Labels: integers are class indices 0..K-1 (named class_0.. unless class_names names them); an integer
    class with no sample (labels 1..K leave class 0 empty) is an error unless class_names lists it.
    Strings become classes in sorted order (or class_names order). Anything else (1.5, inf) is refused.
    At least 2 classes must have samples. No label (an empty cell, NaN, '') is refused for training.

Splits: a `split` column/array is used as given ('test' optional: without it there is no test split).
    When it has no 'val', validation is taken from 'train' (val_fraction). A subject on two sides is a
    warning, not an error. Without a `split`: test first (test_fraction of the samples, stratified by
    class; 0 = none), then validation (val_fraction of the rest), seeded by data_seed. With subjects both
    are grouped (scikit-learn's StratifiedGroupKFold: one of round(1/fraction) folds of subjects), so no
    subject is in two splits. A class with fewer than 3 samples (or data with fewer than 3 subjects) gets
    no test samples; this is noted. Every class needs a training sample. Cross-validation (`read_pool`,
    `--folds`) splits all samples into folds itself: a `split` is then not used (noted).

Recordings to score (`read_recordings`, what `aqtrack predict` reads): the same formats and checks, any
    length, no splits. Labels are optional (a table without `label`, an .npz without `y`, a .ts with
    `@classLabel false`), and so is each recording's: a table's label empty on all of a recording's
    rows, an .npz's y NaN (integer classes: save y as float) or '' (class names) mark one unlabelled
    (Recordings.y UNLABELLED). Labels given must name the run's classes (integers: index them). A
    recording's subject or split may be empty too ('', kept as metadata). Channels must be the run's:
    by name where the file names them (ch_<name> columns, .npz channel_names; put in the run's order),
    by count otherwise. The run's missing-value policy applies, as in training.

Every problem is a one-line `DataError` naming the file, the problem and the fix; several problems found
together are reported together. Nothing read from the file is echoed beyond a few short names.
"""

from __future__ import annotations

import logging
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from aqtrack.config import MISSING_POLICIES, DataConfig
from aqtrack.data.dataset import MIN_FRAMES, ActionQualityData, Pooled, Split, lengths_of, pad_sequences
from aqtrack.data.missing import fill_missing
from aqtrack.errors import DataError

log = logging.getLogger(__name__)

NPZ_ARRAYS = ("X", "y", "lengths", "split", "subject", "class_names", "channel_names", "sample_id")
REQUIRED_COLUMNS = ("sample_id", "frame", "label")
PER_SAMPLE_COLUMNS = ("split", "subject")  # optional columns with a meaning of their own
CHANNEL_PREFIX = "ch_"
SPLITS = ("train", "val", "test")
MAX_MESSAGE = 300  # characters of a DataError, file name included
UNLABELLED = -1  # Recordings.y of a recording to score that has no label
_SHOW = 5  # how many offending values/samples a message lists before "..."
_NAME = 24  # longest name (column, label, id) echoed from a file

SUFFIXES = (".csv", ".parquet", ".npz", ".ts")
_NPZ_HINT = "save X float [N, T, C] and y [N] with numpy.savez"
_NAMES_FIX = "use labels 0..len(class_names)-1 or add the missing names"
_TABLE_HINT = "expected a header row, then one row per frame: sample_id, frame, label, ch_<name>..."


@dataclass
class _Raw:
    """What a reader found, before validation. `x` float32 [N, T, C] NaN-padded once checked."""

    x: np.ndarray
    y: np.ndarray | None  # None: the file has no labels (allowed when reading recordings to score)
    lengths: np.ndarray | None = None  # None: trailing all-NaN frames are padding
    split: np.ndarray | None = None
    subjects: np.ndarray | None = None
    class_names: np.ndarray | None = None
    channel_names: tuple[str, ...] | None = None
    sample_ids: np.ndarray | None = None  # None: samples are named "sample i" (npz, .ts)
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Clean:
    """A validated dataset before it is split: missing values filled, labels as class indices."""

    samples: Split
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    filled: int
    notes: list[str]


@dataclass(frozen=True)
class Recordings:
    """Recordings to score with a trained network (`read_recordings`): no splits, labels optional,
    channels in the run's order, missing values filled (or refused) by the run's policy."""

    x: np.ndarray  # float32 [N, T_max, C]: NaN after each sample's real length, never inside it
    lengths: np.ndarray  # int64 [N], real frames of each sample (>= 2)
    sample_ids: np.ndarray  # [N] str: tables in sample_id order; .npz / .ts in file order ("0", "1"...)
    subjects: np.ndarray | None  # [N] str ('' for a recording without one), or None: the file has none
    metadata: dict[str, np.ndarray]  # other per-sample columns (side, session, split...), each [N]; '' empty
    # int64 [N], indices into the run's class names, UNLABELLED (-1) for a recording without a label;
    # None: the file has no labels at all. Never index class names with it unmasked: -1 is a valid index.
    y: np.ndarray | None
    filled: int  # missing values the run's policy filled
    notes: tuple[str, ...]  # what the reader decided on the user's behalf, one line each

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> np.ndarray:
        """bool [N]: the recordings that have a label (none when the file has no labels)."""
        return np.zeros(len(self), dtype=bool) if self.y is None else self.y != UNLABELLED


def read_recordings(
    path: Path | str, *, channel_names: Sequence[str], class_names: Sequence[str], missing: str
) -> Recordings:
    """Read recordings to score with a trained run: any format and length `load_file` reads, with or
    without labels (a table without `label`, an .npz without `y`, a .ts with `@classLabel false`), or
    with some recordings unlabelled (a table's label empty on all their rows, an .npz's y '' or NaN):
    their y is UNLABELLED. `channel_names`, `class_names` and `missing` are the run's; the checks and
    messages are training's, except that a label, subject or split may be empty for a whole recording.

    Channels: a file that names them (a table's ch_<name> columns, an .npz's channel_names) must hold
    exactly the run's, in any order (they are put in the run's order); a file that does not (.npz
    without channel_names, .ts), or a run trained on unnamed channels, must hold as many. Labels, when
    present: strings (and integers an .npz names with class_names) must be the run's class names; other
    integers index them. Missing values are filled or refused as `missing` says, as in training. A
    `split` is kept as metadata. Raises DataError: one line naming the file, the problem and the fix;
    a value empty on some rows of a recording and set on others is one.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}")
    path = check_file(path)
    channel_names, class_names = tuple(channel_names), tuple(class_names)
    raw = _read(path, labels_required=False)
    _split_as_metadata(raw)
    x, lengths = _checked(path, raw, scoring=True)
    x = _in_run_order(path, x, raw, channel_names)
    y = None if raw.y is None else _run_classes(path, raw, class_names)
    notes = list(raw.notes)
    refuse_fix = "the run was trained with missing values refused (--missing refuse): fill them in the file"
    x, filled = _filled(path, x, lengths, missing, raw.sample_ids, channel_names, notes, refuse_fix)
    n = len(x)
    sample_ids = raw.sample_ids if raw.sample_ids is not None else np.arange(n).astype(str)
    labelled = "" if y is None else f", {int((y != UNLABELLED).sum())} labelled"
    log.info("read %d recording(s) from %s%s", n, path, labelled)
    return Recordings(
        x=x,
        lengths=lengths,
        sample_ids=np.asarray(sample_ids).astype(str),
        subjects=None if raw.subjects is None else _text(raw.subjects),
        metadata=raw.metadata,
        y=y,
        filled=filled,
        notes=tuple(notes),
    )


def check_file(path: Path | str) -> Path:
    """`path` as a Path if it is a file of a format aqtrack reads; else one DataError line."""
    path = Path(path)
    if not path.is_file():
        problem = "no such file" if not path.exists() else "not a file"
        _fail(path, [f"{problem}; pass a .csv, .parquet, .npz or .ts file"])
    if path.suffix.lower() not in SUFFIXES:
        _fail(path, [_unsupported(path)])
    return path


def _split_as_metadata(raw: _Raw) -> None:
    """Scoring makes no splits: a file's `split` is carried along like any other per-sample column."""
    split, raw.split = raw.split, None
    if split is None:
        return
    if raw.x.ndim == 3 and split.ndim == 1 and len(split) == len(raw.x):
        raw.metadata = {"split": split.astype(str), **raw.metadata}
    else:
        _note(raw.notes, "ignored array 'split': not one value per sample", warning=True)


def _in_run_order(path: Path, x: np.ndarray, raw: _Raw, channel_names: tuple[str, ...]) -> np.ndarray:
    """x [N, T, C] with its channels in the run's order: matched by name when the file and the run
    both name them, by count otherwise."""
    named_run = channel_names != default_channel_names(len(channel_names))
    if raw.channel_names is None or not named_run:
        if x.shape[2] != len(channel_names):
            _fail(
                path,
                [
                    f"has {x.shape[2]} channel(s), the run was trained on {len(channel_names)} "
                    f"({_show(channel_names)}); give those, in that order"
                ],
            )
        return x
    names = raw.channel_names
    prefix = CHANNEL_PREFIX if path.suffix.lower() in (".csv", ".parquet") else ""
    shown = lambda ns: _show(prefix + n for n in ns)  # noqa: E731  # as the file spells them
    missing = [n for n in channel_names if n not in names]
    extra = [n for n in names if n not in channel_names]
    if missing or extra:
        what = "channel columns" if prefix else "channel_names"
        parts = [f"missing {shown(missing)}"] if missing else []
        parts += [f"not the run's {shown(extra)}"] if extra else []
        _fail(path, [f"{what} do not match the run's; rename or drop them: {'; '.join(parts)}"])
    if len(set(names)) != len(names):
        _fail(path, ["channel_names has duplicates; give each channel its own name"])
    order = [names.index(n) for n in channel_names]
    if order != sorted(order):
        _note(raw.notes, "channels put in the run's order")
    return x[:, :, order]


def _run_classes(path: Path, raw: _Raw, class_names: tuple[str, ...]) -> np.ndarray:
    """The file's labels as indices into the run's class names, int64 [N]; UNLABELLED where empty."""
    y, k = raw.y, len(class_names)
    labelled = ~_empty(y)
    if y.dtype.kind not in "USb":
        y = np.where(labelled, y, 0).astype(np.int64)  # 0 stands in for a missing label until the end
    if y.dtype.kind not in "USb" and raw.class_names is not None:  # integers the file's class_names name
        names = _checked_class_names(path, raw.class_names)
        _check_indices(path, y, len(names), raw.sample_ids, f"{len(names)} class_names; {_NAMES_FIX}")
        y = np.asarray(names)[y]
    if y.dtype.kind in "USb":
        labels = y.astype(str).tolist()
        index = {name: i for i, name in enumerate(class_names)}
        strange = labelled & ~np.isin(y.astype(str), list(index))
        if strange.any():
            # The fix: those samples' labels, not all of them (the others still give scores).
            _fail(
                path,
                [
                    f"label(s) {_show(sorted(set(y[strange].astype(str).tolist())))} are not classes of the "
                    f"run ({_show(class_names)}); fix them ({int(strange.sum())} sample(s), first "
                    f"{_where(int(np.argmax(strange)), raw.sample_ids)}) or empty them to score those "
                    "unlabelled"
                ],
            )
        y = np.array([index.get(v, UNLABELLED) for v in labels], dtype=np.int64)
    else:
        fix = f"use 0..{k - 1} or class names"
        _check_indices(path, y, k, raw.sample_ids, f"the run's {k} classes ({_show(class_names)}); {fix}")
    return np.where(labelled, y, UNLABELLED)


def load_file(
    path: Path,
    *,
    val_fraction: float,
    seed: int,
    test_fraction: float = DataConfig.test_fraction,
    missing: str = DataConfig.missing,
) -> ActionQualityData:
    """Load a .csv/.parquet long table, a .npz or a .ts file (formats: this module's docstring).

    Returns the splits (x float32 [N, T_max, C], NaN after each sample's real length) with the notes of
    what was decided (splits made, values filled). Raises DataError, one line naming the file, for
    anything the file or the settings get wrong.
    """
    path = Path(path)
    _check_settings(path, val_fraction, test_fraction, missing)
    raw = _read(path)
    clean = _validate(path, raw, missing)
    partition = _partition(
        path, clean, raw.split, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed
    )
    data = ActionQualityData(
        train=clean.samples.select(partition.train),
        val=clean.samples.select(partition.val),
        test=None if partition.test is None else clean.samples.select(partition.test),
        class_names=clean.class_names,
        channel_names=clean.channel_names,
        source=str(path),
        filled_values=clean.filled,
        notes=(*clean.notes, *partition.notes),
        missing_policy=missing,
        split_info=partition.info,
    )
    sizes = ", ".join(f"{len(split)} {name}" for name, split in data.splits.items())
    log.info("loaded %s: %s samples", path, sizes)
    return data


def read_pool(path: Path, *, missing: str = DataConfig.missing) -> Pooled:
    """Every sample of the file, validated and unsplit (for cross-validation). A `split` column is not
    used: cross-validation splits all samples itself (noted). Raises DataError as `load_file` does."""
    path = Path(path)
    if missing not in MISSING_POLICIES:
        _fail(path, [f"missing must be one of {', '.join(MISSING_POLICIES)}, got {_short(missing)!r}"])
    raw = _read(path)
    clean = _validate(path, raw, missing)
    if raw.split is not None:
        _note(
            clean.notes,
            f"{path}: its 'split' is not used: cross-validation splits all {len(clean.samples)} samples "
            "into folds itself",
            warning=True,
        )
    return Pooled(
        samples=clean.samples,
        class_names=clean.class_names,
        channel_names=clean.channel_names,
        source=str(path),
        filled_values=clean.filled,
        notes=tuple(clean.notes),
        missing_policy=missing,
    )


def _check_settings(path: Path, val_fraction: float, test_fraction: float, missing: str) -> None:
    problems = []
    if not 0.0 < val_fraction < 1.0:
        problems.append(f"val_fraction must be in (0, 1), got {val_fraction}; use e.g. 0.2")
    if not 0.0 <= test_fraction < 1.0:
        problems.append(
            f"test_fraction must be in [0, 1), got {test_fraction}; use e.g. 0.2 (0: no test split)"
        )
    if missing not in MISSING_POLICIES:
        problems.append(f"missing must be one of {', '.join(MISSING_POLICIES)}, got {_short(missing)!r}")
    if problems:
        _fail(path, problems)


def _read(path: Path, labels_required: bool = True) -> _Raw:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path, labels_required)
    if suffix in (".csv", ".parquet"):
        return _table_to_raw(path, _read_table(path), labels_required)
    if suffix == ".ts":
        return _load_ts(path, labels_required)
    _fail(path, [_unsupported(path)])


def _unsupported(path: Path) -> str:
    return f"unsupported file type {_short(path.suffix)!r}; use a .csv, .parquet, .npz or .ts file"


# --- messages ------------------------------------------------------------------------------------------


def _fail(path: Path, problems: list[str]) -> NoReturn:
    """Raise one DataError line of at most MAX_MESSAGE characters; problems that do not fit are counted."""
    problems = [" ".join(p.split()) for p in problems]  # one line, whatever the texts held
    message = f"{path}: {problems[0]}"
    shown = 1
    for problem in problems[1:]:
        left = len(problems) - shown - 1
        room_for_count = len(f" | (+{left} more)") if left else 0
        if len(message) + 3 + len(problem) + room_for_count > MAX_MESSAGE:
            break
        message, shown = f"{message} | {problem}", shown + 1
    if shown < len(problems):
        message += f" | (+{len(problems) - shown} more)"
    if len(message) > MAX_MESSAGE:  # only when one problem (or the path) is too long on its own
        message = message[: MAX_MESSAGE - 3] + "..."
    raise DataError(message)


def _short(value, limit: int = _NAME) -> str:
    """A value from the file as a short, one-line string: names are echoed, data rows never."""
    text = " ".join(str(value.item() if isinstance(value, np.generic) else value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(values) -> str:
    values = list(values)
    shown = ", ".join(repr(_short(v)) for v in values[:_SHOW])
    return shown + (", ..." if len(values) > _SHOW else "")


def _listed(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:_SHOW])) + (", ..." if len(numbers) > _SHOW else "")


def _error_text(exc: BaseException) -> str:
    """An exception's message cut short: parser errors can quote a whole line of the file."""
    text = re.sub(r"<[^>]*>", "", str(exc))  # aeon quotes its file object: <_io.TextIOWrapper name=...>
    return _short(text, limit=80) or type(exc).__name__


def _where(i: int, sample_ids: np.ndarray | None) -> str:
    return f"sample {i}" if sample_ids is None else f"sample_id {_short(sample_ids[i])!r}"


def _note(notes: list[str], message: str, *, warning: bool = False) -> None:
    """Record a decision taken on the user's behalf: logged once here, kept in `dataset_stats`."""
    (log.warning if warning else log.info)(message)
    notes.append(message)


# --- .npz ----------------------------------------------------------------------------------------------


def _load_npz(path: Path, labels_required: bool = True) -> _Raw:
    # Open the file ourselves: np.load leaks its handle when a truncated zip fails to parse.
    with path.open("rb") as f:
        try:
            archive = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            _fail(path, [f"not a readable .npz archive ({_error_text(exc)}); {_NPZ_HINT}"])
        if not isinstance(archive, np.lib.npyio.NpzFile):
            _fail(path, [f"holds a single .npy array, not an .npz archive; {_NPZ_HINT}"])
        with archive:
            missing = [key for key in ("X", "y")[: 2 if labels_required else 1] if key not in archive.files]
            if missing:
                _fail(
                    path,
                    [f"missing array(s) {', '.join(missing)} (found {_show(archive.files)}); {_NPZ_HINT}"],
                )
            arrays = {key: _read_npz_array(path, archive, key) for key in NPZ_ARRAYS if key in archive.files}
            extra = {key: _read_extra_array(archive, key) for key in archive.files if key not in NPZ_ARRAYS}
    raw = _Raw(
        x=arrays["X"],
        y=arrays.get("y"),
        lengths=arrays.get("lengths"),
        split=arrays.get("split"),
        subjects=arrays.get("subject"),
        class_names=arrays.get("class_names"),
        sample_ids=arrays.get("sample_id"),
    )
    _npz_names_and_metadata(path, raw, arrays.get("channel_names"), extra)
    return raw


def _read_npz_array(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        value = archive[key]
    # ValueError: an object array, which needs pickle (never allowed here).
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        if key == "X" and "Object arrays" in str(exc):
            _fail(
                path,
                [
                    "X is an object array (ragged samples need pickle, never loaded); save X as float "
                    "[N, T_max, C] with NaN after each sample's end, or add an int 'lengths' array"
                ],
            )
        _fail(path, [f"array {key!r} cannot be read ({_error_text(exc)}); save plain numeric/string arrays"])
    if not isinstance(value, np.ndarray):  # NpzFile hands back raw bytes for members that are not .npy
        _fail(path, [f"array {key!r} cannot be read (not .npy data); save the arrays with numpy.savez"])
    return value


def _read_extra_array(archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray | None:
    """An array outside NPZ_ARRAYS: metadata if readable, else None (ignored and noted, not an error)."""
    try:
        value = archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # e.g. a pickled object array: never loaded, reported as ignored
    return value if isinstance(value, np.ndarray) else None


def _npz_names_and_metadata(
    path: Path, raw: _Raw, channel_names: np.ndarray | None, extra: dict[str, np.ndarray | None]
) -> None:
    n = len(raw.x) if raw.x.ndim == 3 else None
    c = raw.x.shape[2] if raw.x.ndim == 3 else None
    if channel_names is not None:
        if channel_names.ndim != 1 or channel_names.dtype.kind not in "US" or len(channel_names) != c:
            _fail(path, [f"channel_names must be {c} strings (one per channel of X); fix or drop it"])
        raw.channel_names = tuple(channel_names.astype(str).tolist())
    ignored = []
    for key, value in extra.items():
        if value is not None and value.ndim == 1 and len(value) == n and value.dtype.kind in "biufUS":
            raw.metadata[key] = value
        else:
            ignored.append(key)
    if ignored:
        _note(raw.notes, f"ignored array(s) {_show(ignored)}: not one plain value per sample", warning=True)


# --- .csv / .parquet (long format: one row per sample and frame) -------------------------------------


def _read_table(path: Path):
    import pandas as pd  # slow import, only paid when a table is loaded

    try:
        df = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        _fail(path, [f"file is empty; {_TABLE_HINT}"])
    except (ValueError, OSError) as exc:  # parser errors, bad encodings and pyarrow errors all land here
        _fail(path, [f"cannot read file ({_error_text(exc)}); {_TABLE_HINT}"])
    df.columns = [str(c) for c in df.columns]
    return df


def _column_problems(path: Path, df, required: tuple[str, ...] = REQUIRED_COLUMNS) -> list[str]:
    columns = list(df.columns)
    missing = [c for c in required if c not in columns]
    wrong_shape = _wrong_shape(columns) if missing else None
    if wrong_shape:
        return [wrong_shape]
    problems = [f"missing required column(s) {_show(missing)}"] if missing else []
    channels = [c for c in columns if c.startswith(CHANNEL_PREFIX)]
    if df.empty:  # nothing else to check, and empty columns read as non-numeric
        problems.append("file has no rows (zero samples)")
    elif not channels:
        problems.append("no channel columns")
    if problems:
        return [*problems, _TABLE_HINT]
    non_numeric = [c for c in channels if not _is_numeric(df[c])]
    if non_numeric:
        problems.append(f"non-numeric values in channel column(s) {_show(non_numeric)}; use numbers only")
    problems += _empty_row_problems(path, df)
    if not _is_integral(df["frame"]):
        problems.append("column 'frame' must hold integers (frame numbers); renumber the frames")
    return problems


def _empty_row_problems(path: Path, df) -> list[str]:
    """sample_id and frame, the columns that place a row, must be on every row. (A per-sample column
    empty for a whole sample is judged per sample: `_partly_empty_problems`, `_empty_problems`.)"""
    problems = []
    empty_ids = _empty_rows(df["sample_id"])
    empty = np.flatnonzero(_empty_rows(df["frame"]))
    if len(empty):
        ids = df["sample_id"].to_numpy()[empty[~empty_ids[empty]]]
        which = f"of sample_id(s) {_show(dict.fromkeys(ids))}" if len(ids) else _row(path, empty[0])
        problems.append(
            f"column 'frame' is empty on {len(empty)} row(s) {which}; give every row its frame number"
        )
    empty = np.flatnonzero(empty_ids)
    if len(empty):
        problems.append(
            f"column 'sample_id' is empty on {len(empty)} row(s), first {_row(path, empty[0])}; give every "
            "row the id of its sample"
        )
    return problems


def _row(path: Path, i: int) -> str:
    """Where the table's row i (0-based, in file order) is, as the user would look for it."""
    if path.suffix.lower() == ".csv":
        return f"on line {i + 2}"  # line 1 is the header
    return f"at row {i} (counting from 0)"


def _empty_rows(column) -> np.ndarray:
    """bool [rows]: cells that are empty: NaN/None, or text of nothing but spaces (parquet keeps '')."""
    import pandas as pd

    empty = pd.isna(column).to_numpy()
    if not _is_numeric(column):
        empty = empty | column.astype(str).str.strip().eq("").to_numpy()
    return empty


def _wrong_shape(columns: list[str]) -> str | None:
    """Name the commonest wrong shapes (another separator, a wide table, no header) instead of listing
    the columns the file seems to have."""
    if len(columns) == 1:
        for sep, name in (("\t", "tab"), (";", "semicolon"), (" ", "space")):
            fields = columns[0].strip().split(sep)
            if len(fields) > 1 and "sample_id" in fields:
                return f"is {name}-separated, not comma-separated; save it with commas between the columns"
            if len(fields) > 1:
                return (
                    f"is {name}-separated, not comma-separated, with no sample_id column (a wide table, one "
                    "row per sample?); save a comma-separated long table: one row per frame with sample_id, "
                    "frame, label, ch_<name>..."
                )
    if len(columns) >= 3 and all(_is_number(c) for c in columns):
        return (
            "has no header row (its first row is numbers; a wide table, one row per sample?); save a long "
            "table: a header, then one row per frame with sample_id, frame, label, ch_<name>..."
        )
    return None


def _is_number(text: str) -> bool:
    try:
        float(text.split(".")[0] if text.count(".") > 1 else text)  # pandas renames duplicates "1.5.1"
    except ValueError:
        return False
    return True


def _is_numeric(column) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _is_integral(column) -> bool:
    if not _is_numeric(column):
        return False
    values = column.dropna().to_numpy(dtype=np.float64)
    return bool(np.all(np.isfinite(values) & (values == np.round(values))))


def _table_to_raw(path: Path, df, labels_required: bool = True) -> _Raw:
    required = REQUIRED_COLUMNS if labels_required else tuple(c for c in REQUIRED_COLUMNS if c != "label")
    problems = _column_problems(path, df, required)
    if problems:
        _fail(path, problems)
    try:
        df = df.sort_values(["sample_id", "frame"], kind="stable", ignore_index=True)
    except TypeError as exc:
        _fail(
            path,
            [
                f"sample_id values cannot be sorted ({_error_text(exc)}); "
                "use one type (all numbers or all strings)"
            ],
        )
    groups = df.groupby("sample_id", sort=True)
    channels = [c for c in df.columns if c.startswith(CHANNEL_PREFIX)]
    per_sample = [c for c in df.columns if c not in ("sample_id", "frame") and c not in channels]
    metadata = [c for c in per_sample if c != "label" and c not in PER_SAMPLE_COLUMNS]
    for c in per_sample:  # one spelling of "empty": NaN ('' and spaces too, which parquet can hold)
        df[c] = df[c].mask(_empty_rows(df[c]))
    problems = _partly_empty_problems(df, per_sample, scoring=not labels_required)
    problems += _per_sample_problems(groups, per_sample, metadata) + _frame_problems(df, groups)
    if problems:
        _fail(path, problems)

    first = groups.first()
    frames = df["frame"].to_numpy(dtype=np.float64).astype(np.int64)
    start = groups["frame"].min().to_numpy(dtype=np.float64).astype(np.int64)
    lengths = groups["frame"].max().to_numpy(dtype=np.float64).astype(np.int64) - start + 1
    codes = groups.ngroup().to_numpy()  # the sample of each row, 0..N-1 in sample_id order
    # Scatter rows into [N, T_max, C]; frames a sample skips stay NaN, i.e. missing (filled or refused).
    x = np.full((len(first), int(lengths.max()), len(channels)), np.nan, dtype=np.float32)
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which validation reports
        x[codes, frames - start[codes]] = df[channels].to_numpy(dtype=np.float64)
    raw = _Raw(
        x=x,
        y=_labels_of(first["label"]) if "label" in df.columns else None,
        lengths=lengths,
        split=_text_of(first["split"]) if "split" in df.columns else None,
        subjects=_text_of(first["subject"]) if "subject" in df.columns else None,
        channel_names=tuple(c[len(CHANNEL_PREFIX) :] for c in channels),
        sample_ids=first.index.to_numpy(dtype=str),
        metadata={c: _metadata_of(first[c]) for c in metadata},
    )
    skipped = int(lengths.sum() - len(df))
    if skipped:
        gappy = int((lengths != groups.size().to_numpy()).sum())
        _note(
            raw.notes,
            f"{skipped} skipped frame number(s) in {gappy} sample(s) are missing frames "
            f"({skipped * len(channels)} values)",
        )
    if metadata:
        _note(raw.notes, f"kept per-sample column(s) {_show(metadata)} as metadata")
    return raw


def _partly_empty_problems(df, per_sample: list[str], scoring: bool) -> list[str]:
    """A per-sample column empty on some rows of a sample and set on others: which value is meant?
    (Empty on all its rows is a sample without one: an unlabelled recording, an unknown subject.)"""
    empty = df[per_sample].isna().groupby(df["sample_id"], sort=True)
    partly = empty.any() & ~empty.all()  # [samples, columns]
    problems = []
    for column in [c for c in per_sample if partly[c].any()]:
        where = f"sample_id(s) {_show(partly.index[partly[column].to_numpy()])}"
        if column in ("label", *PER_SAMPLE_COLUMNS):
            name, fix = column, f"give each its {column} on every row"
            if scoring:  # a whole recording may go without one
                fix += ", or on none to score it unlabelled" if column == "label" else ", or on none"
        else:
            name, fix = (
                f"column {_short(column)!r}",
                "give each its value on every row or on none, or drop it",
            )
        problems.append(f"{name} is empty on some rows of {where} and set on others; {fix}")
    return problems


def _per_sample_problems(groups, per_sample: list[str], metadata: list[str]) -> list[str]:
    # Values that differ within a sample; an empty cell is not a value (`_partly_empty_problems`).
    varying = groups[per_sample].nunique(dropna=True) > 1  # [samples, columns]
    problems = []
    for column in [c for c in per_sample if c not in metadata and varying[c].any()]:
        samples = varying.index[varying[column].to_numpy()]
        problems.append(f"{column} changes within sample_id(s) {_show(samples)}; use one {column} per sample")
    per_frame = [c for c in metadata if varying[c].any()]
    if per_frame:
        problems.append(
            f"column(s) {_show(per_frame)} change within a sample; rename to "
            f"{CHANNEL_PREFIX}{_short(per_frame[0])} to use as a channel, or drop "
            "(frames are ordered by 'frame')"
        )
    return problems


def _frame_problems(df, groups) -> list[str]:
    problems = []
    duplicated = df.duplicated(["sample_id", "frame"]).to_numpy()
    if duplicated.any():
        bad = df.loc[duplicated, "sample_id"].unique()
        problems.append(f"sample_id(s) {_show(bad)} have duplicate frame numbers; list each frame once")
    # Frame numbers that skip more frames than a sample lists are times or ids, not frame counts.
    span = groups["frame"].max() - groups["frame"].min() + 1
    sparse = span[span > 2 * groups.size()]
    if len(sparse):
        sid = sparse.index[0]
        problems.append(
            f"sample_id(s) {_show(sparse.index)} skip more frames than they list (sample_id "
            f"{_short(sid)!r}: {groups.size()[sid]} rows over {int(sparse.iloc[0])} frames); "
            "'frame' must count frames 0, 1, 2..."
        )
    return problems


def _labels_of(column) -> np.ndarray:
    """Labels as read: numbers as float64 (checked to be whole later; NaN: none), anything else as
    strings ('': none)."""
    return column.to_numpy(dtype=np.float64) if _is_numeric(column) else _text_of(column)


def _metadata_of(column) -> np.ndarray:
    return column.to_numpy() if _is_numeric(column) else _text_of(column)


def _text_of(column) -> np.ndarray:
    """One string per sample, '' where the column is empty (never 'nan'). Whole numbers that an empty
    cell turned into floats read as the integers they were: subject 7, not 7.0, as without the gap."""
    empty = column.isna().to_numpy()
    if column.dtype.kind == "f" and _is_integral(column):
        column = column.fillna(0).astype(np.int64)
    # Element by element: pandas 3's to_numpy(dtype=str) cuts every string to 1 character when one is NA.
    return np.array(["" if e else str(v) for v, e in zip(column.tolist(), empty, strict=True)], dtype=str)


# --- .ts (aeon/sktime) ---------------------------------------------------------------------------------


def _load_ts(path: Path, labels_required: bool = True) -> _Raw:
    try:
        from aeon.datasets import load_from_ts_file  # optional extra: aqtrack[ts]
    except ImportError:
        _fail(path, ["reading .ts files needs aeon, an optional extra: pip install 'aqtrack[ts]'"])
    try:
        cases, labels, meta = load_from_ts_file(str(path), return_meta_data=True)
    except (OSError, ValueError, IndexError, KeyError) as exc:  # aeon raises OSError for format errors
        _fail(path, [f"not a readable .ts file ({_error_text(exc)}); check it against aeon's .ts format"])
    labelled = bool(meta.get("classlabel")) and not meta.get("targetlabel") and len(labels) == len(cases)
    unlabelled = not meta.get("classlabel") and not meta.get("targetlabel") and len(labels) == 0
    if not labelled and (labels_required or not unlabelled):  # unlabelled: `@classLabel false`
        _fail(
            path,
            ["has no class labels (@classLabel true <names> in the header); aqtrack needs one per sample"],
        )
    if len(cases) == 0:
        _fail(path, ["has no samples after @data; add one line per sample"])
    # aeon: [N, C, T] (equal length) or N arrays [C, T_i]; aqtrack wants [T_i, C] per sample.
    with np.errstate(over="ignore"):
        x, _ = pad_sequences([np.asarray(case, dtype=np.float64).T for case in cases])
    names = _ts_class_names(path, [str(v) for v in meta.get("class_values", [])])
    by_lower = {name.lower(): name for name in names}
    return _Raw(
        x=x,
        y=None if unlabelled else np.array([by_lower.get(str(v), str(v)) for v in labels]),
        class_names=np.array(names) if names else None,
    )


def _ts_class_names(path: Path, lowered: list[str]) -> list[str]:
    """The header's @classLabel names with their original case (aeon lowercases the whole file)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            tokens = line.split()
            if tokens and tokens[0].lower() == "@data":
                break
            if len(tokens) > 2 and tokens[0].lower() == "@classlabel" and tokens[1].lower() == "true":
                original = tokens[2:]
                if [t.lower() for t in original] == lowered and len(set(original)) == len(original):
                    return original
    return lowered


# --- validation shared by all formats ----------------------------------------------------------------


def _validate(path: Path, raw: _Raw, missing: str) -> _Clean:
    x, lengths = _checked(path, raw)
    y, class_names, notes = _classes(path, raw.y, raw.class_names, raw.sample_ids)
    channel_names = raw.channel_names or default_channel_names(x.shape[2])
    notes = [*raw.notes, *notes]
    x, filled = _filled(path, x, lengths, missing, raw.sample_ids, channel_names, notes)
    n = len(y)
    sample_ids = raw.sample_ids if raw.sample_ids is not None else np.arange(n).astype(str)
    samples = Split(
        x=x,
        y=y,
        lengths=lengths,
        sample_ids=np.asarray(sample_ids).astype(str),
        subjects=None if raw.subjects is None else raw.subjects.astype(str),
        metadata=raw.metadata,
    )
    return _Clean(samples, class_names, channel_names, filled, notes)


def default_channel_names(count: int) -> tuple[str, ...]:
    """The names of the channels of a file that does not name them (.npz without channel_names, .ts)."""
    return tuple(f"ch_{j}" for j in range(count))


def _checked(path: Path, raw: _Raw, scoring: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate what a reader found, labels included when there are any: (x float32 [N, T, C] with NaN
    past each sample's real length, lengths int64 [N]), or one DataError with every problem found.
    Training needs every sample's label, subject and split; `scoring` lets any of them be empty."""
    problems = _shape_problems(raw)
    if problems:
        _fail(path, problems)
    x, lengths = _padded(raw)
    problems = [] if scoring else _empty_problems(path, raw)
    problems += _content_problems(x, lengths, raw)
    if raw.y is not None:
        problems += _label_problems(raw.y, raw.sample_ids)
    if problems:
        _fail(path, problems)
    return x, lengths


def _filled(
    path: Path,
    x: np.ndarray,
    lengths: np.ndarray,
    missing: str,
    sample_ids: np.ndarray | None,
    channel_names: tuple[str, ...],
    notes: list[str],
    refuse_fix: str = "fill them in the file or use --missing interpolate",
) -> tuple[np.ndarray, int]:
    """The missing-value policy, the same for training and scoring: (x filled, values filled)."""
    try:
        x, filled = fill_missing(
            x, lengths, missing, sample_ids=sample_ids, channel_names=channel_names, refuse_fix=refuse_fix
        )
    except DataError as exc:
        _fail(path, [str(exc)])
    if filled:
        _note(
            notes,
            f"filled {filled} missing value(s) by linear interpolation over frames (--missing {missing})",
        )
    return x, filled


def _empty_problems(path: Path, raw: _Raw) -> list[str]:
    """Samples training cannot use: without a label, or without the subject or split the file gives
    the others. Counted in samples, whatever the rows (a table repeats them on every frame)."""
    n = len(raw.x)
    kind = "column" if path.suffix.lower() in (".csv", ".parquet") else "array"
    problems = []
    for name, values in (("label", raw.y), ("subject", raw.subjects), ("split", raw.split)):
        empty = np.zeros(n, dtype=bool) if values is None else _empty(values)
        if not empty.any():
            continue
        which, count = _which(empty, raw.sample_ids), int(empty.sum())
        if name == "label":
            problems.append(
                f"{count} of {n} samples have no label ({which}); training needs a label on every sample: "
                "label them or leave them out (aqtrack predict scores them)"
            )
        else:
            fix = "give each its subject" if name == "subject" else "mark each 'train', 'val' or 'test'"
            problems.append(
                f"{name} is empty for {count} of {n} samples ({which}); {fix}, or drop the {kind}"
            )
    return problems


def _empty(values: np.ndarray) -> np.ndarray:
    """bool [N]: per-sample values that are empty: NaN, or text of nothing but spaces."""
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind in "US":
        return np.char.strip(values.astype(str)) == ""
    return np.zeros(len(values), dtype=bool)


def _text(values: np.ndarray) -> np.ndarray:
    """Per-sample values [N] as strings, '' where empty (a NaN subject is no subject named 'nan')."""
    return np.where(_empty(values), "", values.astype(str))


def _which(mask: np.ndarray, sample_ids: np.ndarray | None) -> str:
    """The samples `mask` [N] marks, as a message names them: their ids, else their positions."""
    idx = np.flatnonzero(mask)
    if sample_ids is None:
        return f"sample(s) {_listed(idx.tolist())}"
    return f"sample_id(s) {_show(sample_ids[idx])}"


def _shape_problems(raw: _Raw) -> list[str]:
    """Problems with the arrays' types and shapes: without these settled nothing else can be checked."""
    x = raw.x
    if x.dtype.kind not in "iuf":
        return [f"X must be numeric, got dtype {x.dtype}; store the motion data as floats"]
    if x.ndim != 3:
        return [f"X has shape {x.shape}; expected a 3-D array [N samples, T frames, C channels]"]
    n, _, c = x.shape
    if n == 0:
        return ["no samples (X is empty); add at least one sample per class"]
    problems = [] if c >= 1 else [f"X has C={c} channels; need at least 1"]
    if raw.y is None:
        pass
    elif raw.y.ndim != 1:
        problems.append(f"y has shape {raw.y.shape}; expected a 1-D array of class labels [N]")
    elif len(raw.y) != n:
        problems.append(f"X has {n} samples but y has {len(raw.y)}; give one label per sample")
    if raw.lengths is not None:
        problems += _lengths_problems(raw.lengths, x.shape)
    if raw.split is not None:
        problems += _split_problems(raw.split, n)
    for name, values in (("subject", raw.subjects), ("sample_id", raw.sample_ids)):
        if values is not None and (values.ndim != 1 or len(values) != n):
            problems.append(f"{name} has shape {values.shape} but there are {n} samples; give one per sample")
    if raw.sample_ids is not None and raw.sample_ids.ndim == 1 and len(np.unique(raw.sample_ids)) != n:
        problems.append("sample_id values repeat; give each sample its own id")
    return problems


def _lengths_problems(lengths: np.ndarray, shape: tuple[int, ...]) -> list[str]:
    n, t, _ = shape
    hint = f"give one int per sample, 2..{t} (X has T={t} frames)"
    if lengths.ndim != 1 or len(lengths) != n or lengths.dtype.kind not in "iu":
        return [f"lengths must be {n} integers, got {lengths.dtype} {lengths.shape}; {hint}"]
    beyond = np.flatnonzero(lengths > t)
    if len(beyond):
        return [
            f"lengths has {len(beyond)} value(s) beyond T, first {int(lengths[beyond[0]])} "
            f"(sample {beyond[0]}); {hint}"
        ]
    return []


def _split_problems(split: np.ndarray, n: int) -> list[str]:
    if split.ndim != 1 or len(split) != n:
        return [
            f"split has shape {split.shape} but there are {n} samples; "
            "give one 'train'/'val'/'test' per sample"
        ]
    values = split.astype(str)[~_empty(split)]  # an empty split: `_empty_problems`
    invalid = sorted(set(values) - set(SPLITS))
    if invalid:
        return [
            f"split values must be 'train', 'val' or 'test', found {_show(invalid)}; fix or drop the split"
        ]
    if not (values == "train").any():
        return ["split has no train samples; mark some samples 'train', or drop the split"]
    return []


def _padded(raw: _Raw) -> tuple[np.ndarray, np.ndarray]:
    """x as float32 [N, T, C] with NaN past each sample's real length, and those lengths [N]."""
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which _content_problems reports
        x = np.array(raw.x, dtype=np.float32)  # a copy: the caller's arrays are never changed
    if raw.lengths is None:
        return x, lengths_of(x)
    lengths = np.clip(raw.lengths.astype(np.int64), 0, None)
    x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = (
        np.nan
    )  # past the length: ignored, whatever it held
    return x, lengths


def _content_problems(x: np.ndarray, lengths: np.ndarray, raw: _Raw) -> list[str]:
    problems = []
    short = np.flatnonzero(lengths < MIN_FRAMES)
    if len(short):
        i = int(short[0])
        problems.append(
            f"{len(short)} sample(s) have fewer than {MIN_FRAMES} real frames, first "
            f"{_where(i, raw.sample_ids)} ({int(lengths[i])}); give each sample at least {MIN_FRAMES} "
            "frames or drop it"
        )
    infinite = np.isinf(x).reshape(len(x), -1)
    if infinite.any():
        i = int(np.argmax(infinite.any(axis=1)))
        problems.append(
            f"X has {int(infinite.sum())} infinite value(s) (or too large for float32), first in "
            f"{_where(i, raw.sample_ids)}; fix or drop those samples"
        )
    return problems


def _label_problems(y: np.ndarray, sample_ids: np.ndarray | None) -> list[str]:
    if y.dtype.kind in "USb":  # strings (and booleans, read as the strings False/True) name classes
        return []
    if y.dtype.kind not in "iuf":
        return [f"labels must be integers or strings, got dtype {y.dtype}; use class indices 0..K-1 or names"]
    if y.dtype.kind == "f":  # NaN is no label (`_empty_problems`; allowed when scoring), inf is refused
        not_int = ~np.isnan(y) & (~np.isfinite(y) | (y != np.round(y)))
        if not_int.any():
            i = int(np.argmax(not_int))
            return [
                f"labels must be integers, found {float(y[i])} in {_where(i, sample_ids)}; "
                "use 0..K-1 or class names"
            ]
    negative = np.flatnonzero(y < 0)
    if len(negative):
        i = int(negative[0])
        return [
            f"{len(negative)} negative label(s), first {int(y[i])} in {_where(i, sample_ids)}; use 0..K-1"
        ]
    return []


def _classes(
    path: Path, y: np.ndarray, names: np.ndarray | None, sample_ids: np.ndarray | None
) -> tuple[np.ndarray, tuple[str, ...], list[str]]:
    """(class indices int64 [N], class names, notes). Strings: sorted or `names` order; ints: indices."""
    if names is not None:
        names = _checked_class_names(path, names)
    notes: list[str] = []
    if y.dtype.kind in "USb":
        labels = y.astype(str)
        order = tuple(names) if names is not None else tuple(sorted(set(labels.tolist())))
        unknown = sorted(set(labels.tolist()) - set(order))
        if unknown:
            _fail(path, [f"label(s) {_show(unknown)} are not in class_names; add them or fix the labels"])
        index = {name: k for k, name in enumerate(order)}
        y = np.array([index[v] for v in labels.tolist()], dtype=np.int64)
    else:
        y = y.astype(np.int64)
        order = _integer_class_names(path, y, names, sample_ids)
    present = np.unique(y)
    if len(present) < 2:
        only = order[int(present[0])]
        _fail(
            path,
            [f"only one class ({only!r}) has samples; a classifier needs labels from at least 2 classes"],
        )
    empty = [order[k] for k in range(len(order)) if k not in set(present.tolist())]
    if empty:
        _note(
            notes, f"class_names lists class(es) {_show(empty)} with no sample; kept, as listed", warning=True
        )
    return y, order, notes


def _checked_class_names(path: Path, names: np.ndarray) -> list[str]:
    if names.ndim != 1 or names.dtype.kind not in "US":
        _fail(path, [f"class_names must be a 1-D array of strings, got {names.dtype} {names.shape}; fix it"])
    names = names.astype(str).tolist()
    problems = []
    if len(names) < 2:
        problems.append(f"{len(names)} class_names given; a classifier needs at least 2 classes")
    if len(set(names)) != len(names):
        problems.append(f"class_names has duplicates ({_show(names)}); make them unique")
    if problems:
        _fail(path, problems)
    return names


def _integer_class_names(
    path: Path, y: np.ndarray, names: list[str] | None, sample_ids: np.ndarray | None
) -> tuple[str, ...]:
    if names is not None:
        _check_indices(path, y, len(names), sample_ids, f"{len(names)} class_names; {_NAMES_FIX}")
        return tuple(names)
    num_classes = int(y.max()) + 1
    empty = sorted(set(range(num_classes)) - set(np.unique(y).tolist()))
    if empty and num_classes > 1:
        _fail(
            path,
            [
                f"no sample has label {_listed(empty)} (class_{empty[0]}), but integer labels are "
                f"class indices 0..K-1 (found {int(y.min())}.."
                f"{int(y.max())}): renumber from 0, use string labels, or list it in class_names"
            ],
        )
    return tuple(f"class_{k}" for k in range(num_classes))


def _check_indices(path: Path, y: np.ndarray, count: int, sample_ids: np.ndarray | None, what: str) -> None:
    """Refuse integer labels [N] that are not below `count`, naming the first and `what` they index."""
    out_of_range = np.flatnonzero(y >= count)
    if len(out_of_range):
        i = int(out_of_range[0])
        _fail(path, [f"label {y[i]} ({_where(i, sample_ids)}) is out of range for {what}"])


def _partition(path: Path, clean: _Clean, split: np.ndarray | None, *, test_fraction, val_fraction, seed):
    from aqtrack.data.splits import make_splits, split_from_file

    s = clean.samples
    try:
        if split is not None:
            return split_from_file(
                split.astype(str), s.y, s.subjects, clean.class_names, val_fraction=val_fraction, seed=seed
            )
        return make_splits(
            s.y,
            s.subjects,
            clean.class_names,
            test_fraction=test_fraction,
            val_fraction=val_fraction,
            seed=seed,
        )
    except DataError as exc:
        _fail(path, [str(exc)])
