"""The embedded default dataset: seeded, synthetic squat recordings with good form and three faults.

Each sequence is 8 joint-angle channels (hip, knee and ankle flexion plus knee abduction, left and right)
over 100 frames of 2-4 repetitions. Subjects differ in depth, tempo, phase, posture and sensor noise,
and the faults are deliberately subtle against that variation, so a classifier has to learn the shape of
the movement rather than its size: the default model climbs over tens of epochs instead of saturating
in the first.
"""

from __future__ import annotations

import numpy as np

from aqtrack.data import ActionQualityData, Split

CLASS_NAMES = ("good_form", "shallow_depth", "asymmetric", "knee_valgus")
CHANNELS = (
    "left_hip_flexion",
    "right_hip_flexion",
    "left_knee_flexion",
    "right_knee_flexion",
    "left_ankle_dorsiflexion",
    "right_ankle_dorsiflexion",
    "left_knee_abduction",
    "right_knee_abduction",
)
SEQ_LEN = 100
# Flexion amplitude of hip, knee and ankle relative to the knee's, for a full-depth squat.
JOINT_GAIN = np.array([0.9, 1.0, 0.45])


def generate(n_train: int, n_val: int, seed: int, n_test: int = 0) -> ActionQualityData:
    """`n_train` + `n_val` (+ `n_test`; 0 = no test split) sequences, classes balanced, deterministic for a
    given `seed`. The test split has its own random stream: train and val do not change with `n_test`."""
    rng = np.random.default_rng(seed)
    k = len(CLASS_NAMES)
    y = np.concatenate([rng.permutation(np.arange(n) % k) for n in (n_train, n_val)])
    x = _sequences(y, rng)
    test = None
    if n_test:
        test_rng = np.random.default_rng([seed, 1])
        y_test = test_rng.permutation(np.arange(n_test) % k)
        test = _split("test", _sequences(y_test, test_rng), y_test)
    return ActionQualityData(
        train=_split("train", x[:n_train], y[:n_train]),
        val=_split("val", x[n_train:], y[n_train:]),
        test=test,
        class_names=CLASS_NAMES,
        channel_names=CHANNELS,
        source="synthetic",
        split_info={
            "method": "synthetic",
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_test,
            "seed": seed,
        },
    )


def _split(name: str, x: np.ndarray, y: np.ndarray) -> Split:
    return Split(
        x=x,
        y=y.astype(np.int64),
        lengths=np.full(len(y), SEQ_LEN, dtype=np.int64),
        sample_ids=np.array([f"{name}-{i}" for i in range(len(y))]),
        subjects=None,
    )


def _sequences(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(y)
    t = np.linspace(0.0, 1.0, SEQ_LEN)[None, :]  # [1, T]
    reps = rng.uniform(2.0, 4.0, (n, 1))  # tempo: repetitions per sequence
    phase = rng.uniform(0.0, 1.0, (n, 1))
    depth = rng.uniform(0.75, 1.25, (n, 1))  # subject's natural depth
    shape = rng.uniform(0.8, 1.4, (n, 1))  # how long the subject stays near the bottom

    # Everyone is a little asymmetric and a little knock-kneed; the faults are more of the same.
    lag = rng.normal(0.0, 0.01, (n, 1)) + np.where(y == 2, rng.uniform(0.03, 0.08, n), 0.0)[:, None]
    weak = np.where(y == 2, rng.uniform(0.88, 0.98, n), 1.0)[:, None]  # and a little shallower
    valgus = rng.uniform(0.0, 0.05, (n, 1)) + np.where(y == 3, rng.uniform(0.05, 0.15, n), 0.0)[:, None]
    shallow = np.where(y == 1, rng.uniform(0.7, 0.85, n), 1.0)[:, None]

    left = _cycle(reps * t + phase, shape)  # [N, T], 0 standing .. 1 at the bottom
    right = _cycle(reps * (t - lag) + phase, shape)
    x = np.empty((n, SEQ_LEN, len(CHANNELS)))
    for j, gain in enumerate(JOINT_GAIN):
        # A shallow squat mostly loses knee and hip flexion; the ankle changes less.
        joint_depth = depth * gain * shallow ** (0.5 if j == 2 else 1.0)
        x[:, :, 2 * j] = joint_depth * left
        x[:, :, 2 * j + 1] = joint_depth * right * weak
    x[:, :, 6] = valgus * left + rng.normal(0.0, 0.04, (n, 1))
    x[:, :, 7] = valgus * right + rng.normal(0.0, 0.04, (n, 1))

    posture = rng.normal(0.0, 0.1, (n, 1, len(CHANNELS)))  # sensor placement offsets
    drift = np.cumsum(rng.normal(0.0, 0.01, x.shape), axis=1)
    noise = rng.normal(0.0, 1.0, x.shape) * rng.uniform(0.06, 0.15, (n, 1, 1))
    return (x + posture + drift + noise).astype(np.float32)


def _cycle(progress: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Squat depth over a repetition: 0 standing, 1 at the bottom; `shape` > 1 dwells at the bottom."""
    return ((1.0 - np.cos(2.0 * np.pi * progress)) / 2.0) ** (1.0 / shape)
