"""Train / validation / test splits of a data file: seeded, stratified by class, grouped by subject.

A file without its own `split` is split test first (`test_fraction`), then validation from the rest
(`val_fraction`), with scikit-learn's splitters: `train_test_split(..., stratify=y)` without subjects,
`StratifiedGroupKFold` (shuffled with the seed; one fold held out) with subjects, so that no subject is
in two splits. A file's own `split` is used as given; when it has no 'val', validation is taken from its
'train' the same way. Every decision is logged here once and returned as a note for `dataset_stats`.
Errors raise DataError without a file name; the loader adds it.

Cross-validation (`--folds`) splits all samples into K folds instead (`fold_tests`): `StratifiedGroupKFold`
with subjects, `LeaveOneGroupOut` for `loso`, `StratifiedKFold` without subjects (shuffled with the seed
where the splitter allows; LOSO has no randomness). Fold i's samples are its test split, and its
validation split is carved from the other folds as above (`fold_partition`).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np

from aqtrack.errors import DataError

log = logging.getLogger(__name__)

_SHOW = 5
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Partition:
    """Sample indices of each split (ascending: file order), and how they were made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None
    info: dict  # JSON-ready, `dataset_stats["split"]`
    notes: tuple[str, ...]


def make_splits(
    y: np.ndarray,
    subjects: np.ndarray | None,
    class_names: tuple[str, ...],
    *,
    test_fraction: float,
    val_fraction: float,
    seed: int,
) -> Partition:
    """Split samples with class indices `y` [N] (and `subjects` [N] or None): test, then val of the rest.

    A class (or, grouped, the data) too small to reach every split stays out of the later ones: a class
    with fewer than 3 samples gets no test samples, one with a single sample no validation sample, and
    with fewer than 3 subjects there is no test split. What is skipped is noted. Raises DataError when
    no validation split can be made or a class ends up without a training sample.
    """
    method = "stratified" if subjects is None else "grouped-stratified"
    notes: list[str] = []
    pool, test = np.arange(len(y)), None
    if test_fraction > 0:
        pool, held = _hold_out(pool, y, subjects, class_names, test_fraction, seed, "test", notes)
        if len(held):
            test = held
        else:
            need = "3 subjects" if subjects is not None else "3 samples of a class"
            message = (
                f"no test split made (--test-fraction {test_fraction:g}): too few {_unit(subjects)} "
                f"(train, val and test need one each, so at least {need})"
            )
            notes.append(_note(message, warning=True))
    train, val = _hold_out(pool, y, subjects, class_names, val_fraction, seed, "val", notes)
    if not len(val):
        raise DataError(
            f"too few samples to make a validation split; give each class at least 2 {_unit(subjects)}"
        )
    _check_training_classes(y, train, class_names, "give it more samples or set a 'split' column yourself")
    parts = {"train": train, "val": val} | ({} if test is None else {"test": test})
    notes.insert(
        0,
        _note(
            f"no 'split' given: made a {method} split (test_fraction {test_fraction:g}, then val_fraction "
            f"{val_fraction:g} of the rest, seed {seed}): {_sizes(parts, subjects)}"
        ),
    )
    info = {"method": method, "test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed}
    return Partition(train, val, test, info, tuple(notes))


def split_from_file(
    split: np.ndarray,
    y: np.ndarray,
    subjects: np.ndarray | None,
    class_names: tuple[str, ...],
    *,
    val_fraction: float,
    seed: int,
) -> Partition:
    """The file's own `split` [N] of 'train'/'val'/'test' (values already checked; 'test' optional).

    Without 'val', validation is taken from 'train' as `make_splits` would. A subject on two sides is
    a warning (noted), not an error. Raises DataError when a class has no training sample or no
    validation split can be made.
    """
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    test = np.flatnonzero(split == "test")
    notes: list[str] = []
    info: dict = {"method": "file"}
    if not len(val):
        method = "stratified" if subjects is None else "grouped-stratified"
        train, val = _hold_out(train, y, subjects, class_names, val_fraction, seed, "val", notes)
        if not len(val):
            raise DataError(
                f"the 'split' marks no sample 'val' and its 'train' samples are too few to take one from "
                f"(each class needs 2 {_unit(subjects)}); mark some samples 'val'"
            )
        info |= {"val_from_train": method, "val_fraction": val_fraction, "seed": seed}
        notes.append(
            _note(
                f"the 'split' marks no sample 'val': took {len(val)} of its 'train' samples for validation "
                f"({method}, val_fraction {val_fraction:g}, seed {seed})"
            )
        )
    parts = {"train": train, "val": val} | ({"test": test} if len(test) else {})
    if subjects is not None:
        notes += _shared_subjects(parts, subjects)
    _check_training_classes(y, train, class_names, "mark some of its samples 'train'")
    return Partition(train, val, test if len(test) else None, info, tuple(notes))


# --- cross-validation ----------------------------------------------------------------------------------

CV_METHODS = {
    "grouped": "grouped stratified k-fold by subject, StratifiedGroupKFold",
    "loso": "leave one subject out, LeaveOneGroupOut",
    "stratified": "stratified k-fold not grouped by subject (the data has none), StratifiedKFold",
}


def fold_tests(
    y: np.ndarray, subjects: np.ndarray | None, folds: str, seed: int
) -> tuple[list[np.ndarray], str]:
    """The test indices (sorted) of folds 1..K over all samples, and the method (a key of CV_METHODS).

    `folds` is "K" or "loso". Every sample is in exactly one fold; with subjects, every subject too. The
    folds follow from the data and `seed` alone. Raises DataError when the data cannot make them.
    """
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold, StratifiedKFold

    index = np.arange(len(y))
    if folds == "loso":
        if subjects is None:
            raise DataError(
                "--folds loso leaves one subject out, and the data has no subjects; add a 'subject' "
                "column (array) or use --folds K"
            )
        method, splitter, groups = "loso", LeaveOneGroupOut(), subjects
    else:
        k = int(folds)
        units = len(y) if subjects is None else len(np.unique(subjects))
        if k > units:
            raise DataError(
                f"--folds {k}: the data has only {units} {_unit(subjects)}; use --folds {units} or fewer"
                + ("" if subjects is None else " (or --folds loso)")
            )
        if subjects is None:
            method, splitter, groups = "stratified", StratifiedKFold(k, shuffle=True, random_state=seed), None
        else:
            splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
            method, groups = "grouped", subjects
    with warnings.catch_warnings():
        # "The least populated class has only m members": a class in fewer folds than K is fine here.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        tests = [np.sort(test) for _, test in splitter.split(index, y, groups)]
    empty = [i + 1 for i, test in enumerate(tests) if not len(test)]
    if empty:
        raise DataError(f"--folds {folds}: fold(s) {_listed(empty)} would hold no sample; use fewer folds")
    return tests, method


def fold_partition(
    y: np.ndarray,
    subjects: np.ndarray | None,
    class_names: tuple[str, ...],
    plan: tuple[list[np.ndarray], str],
    *,
    fold: int,
    val_fraction: float,
    seed: int,
    announce: bool = True,
) -> Partition:
    """Fold `fold` (1..K) of `plan` (`fold_tests`' result): its samples are the test split, validation
    is held out from the other folds (grouped and stratified as `make_splits` does), the rest trains.
    `announce`: log the summary note (a caller checking every fold first passes False)."""
    tests, method = plan
    if not 1 <= fold <= len(tests):
        raise DataError(f"--fold {fold}: the data makes {len(tests)} folds; pick one of 1..{len(tests)}")
    test = tests[fold - 1]
    notes: list[str] = []
    rest = np.setdiff1d(np.arange(len(y)), test)
    train, val = _hold_out(rest, y, subjects, class_names, val_fraction, seed, "val", notes)
    if not len(val):
        raise DataError(
            f"fold {fold}: too few {_unit(subjects)} outside the fold to make a validation split; give each "
            f"class at least 2 {_unit(subjects)} or use fewer folds"
        )
    _check_training_classes(y, train, class_names, f"fold {fold}: use fewer folds, or more {_unit(subjects)}")
    parts = {"train": train, "val": val, "test": test}
    summary = (
        f"cross-validation fold {fold} of {len(tests)} ({CV_METHODS[method]}; seed {seed}): the fold is "
        f"the test split, validation (val_fraction {val_fraction:g}) from the other folds: "
        f"{_sizes(parts, subjects)}"
    )
    notes.insert(0, _note(summary) if announce else summary)
    info = {"method": f"cv-{method}", "folds": len(tests), "fold": fold}
    info |= {"val_fraction": val_fraction, "seed": seed}
    return Partition(train, val, test, info, tuple(notes))


# --- one hold-out stage --------------------------------------------------------------------------------


def _hold_out(
    pool: np.ndarray,
    y: np.ndarray,
    subjects: np.ndarray | None,
    class_names: tuple[str, ...],
    fraction: float,
    seed: int,
    name: str,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) indices of `pool`, about `fraction` held out for split `name`; both sorted.

    A test split must leave train and val something of each class or subject, so it needs 3 of them;
    a validation split needs 2.
    """
    need = 3 if name == "test" else 2
    if subjects is None:
        return _stratified(pool, y, class_names, fraction, seed, name, need, notes)
    return _grouped(pool, y, subjects, fraction, seed, name, need, notes)


def _stratified(pool, y, class_names, fraction, seed, name, need, notes) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split  # slow import, only paid when a file is split

    classes, counts = np.unique(y[pool], return_counts=True)
    small = classes[counts < need]
    if len(small) and len(small) < len(classes):  # all too small is reported by the caller as no split
        names = _show(class_names[k] for k in small)
        notes.append(_note(f"class(es) {names} have fewer than {need} samples: none of them in {name}"))
    eligible = pool[~np.isin(y[pool], small)]
    if not len(eligible):
        return pool, _EMPTY
    k = len(classes) - len(small)
    # sklearn needs at least one held sample per class; round() keeps 0.3 * 10 from ceiling to 4.
    n_held = min(max(math.ceil(round(fraction * len(eligible), 9)), k), len(eligible) - k)
    kept, held = train_test_split(eligible, test_size=n_held, stratify=y[eligible], random_state=seed)
    return np.sort(np.concatenate([kept, pool[np.isin(y[pool], small)]])), np.sort(held)


def _grouped(pool, y, subjects, fraction, seed, name, need, notes) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import StratifiedGroupKFold

    groups = subjects[pool]
    n_groups = len(np.unique(groups))
    largest_class = int(np.unique(y[pool], return_counts=True)[1].max()) if len(pool) else 0
    # One fold of k held out: k = 1/fraction, as many as subjects (and samples of a class) allow.
    n_splits = min(max(2, round(1 / fraction)), n_groups, largest_class)
    if n_groups < need or n_splits < 2:
        return pool, _EMPTY
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has only m members": classes are checked after the split instead.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = list(splitter.split(pool, y[pool], groups))
    kept, held = next(((k, h) for k, h in folds if len(h)), (np.arange(len(pool)), _EMPTY))
    if n_splits != round(1 / fraction):
        notes.append(
            _note(
                f"{name} holds 1 of {n_splits} folds of subjects ({name} fraction {fraction:g} asks for 1 of "
                f"{round(1 / fraction)}; there are {n_groups} subjects)"
            )
        )
    return np.sort(pool[kept]), np.sort(pool[held])


# --- checks ----------------------------------------------------------------------------------------------


def _check_training_classes(y: np.ndarray, train: np.ndarray, class_names: tuple[str, ...], fix: str) -> None:
    present = np.unique(y)
    untrained = present[~np.isin(present, y[train])]
    if len(untrained):
        names = _show(class_names[k] for k in untrained)
        raise DataError(f"class(es) {names} have no training sample after the split; {fix}")


def _shared_subjects(parts: dict[str, np.ndarray], subjects: np.ndarray) -> list[str]:
    """A warning note when the file's split puts one subject on two sides (scores may be optimistic)."""
    seen: dict[str, set[str]] = {}
    for name, indices in parts.items():
        for subject in np.unique(subjects[indices]):
            seen.setdefault(str(subject), set()).add(name)
    shared = sorted(s for s, names in seen.items() if len(names) > 1)
    if not shared:
        return []
    message = (
        f"the file's 'split' puts {len(shared)} subject(s) in more than one split ({_show(shared)}): "
        "scores on val/test may be optimistic"
    )
    log.warning(message)
    return [message]


# --- wording -------------------------------------------------------------------------------------------


def _note(message: str, *, warning: bool = False) -> str:
    (log.warning if warning else log.info)(message)
    return message


def _unit(subjects: np.ndarray | None) -> str:
    return "samples" if subjects is None else "subjects"


def _sizes(parts: dict[str, np.ndarray], subjects: np.ndarray | None) -> str:
    sizes = ", ".join(f"{len(idx)} {name}" for name, idx in parts.items())
    if subjects is None:
        return sizes + " samples"
    groups = "/".join(str(len(np.unique(subjects[idx]))) for idx in parts.values())
    return f"{sizes} samples from {groups} subjects"


def _listed(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers[:_SHOW]) + (", ..." if len(numbers) > _SHOW else "")


def _show(values, limit: int = 24) -> str:
    values = [str(v) for v in values]
    shown = [repr(v if len(v) <= limit else v[: limit - 3] + "...") for v in values[:_SHOW]]
    return ", ".join(shown) + (", ..." if len(values) > _SHOW else "")
