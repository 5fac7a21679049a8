"""The embedded default dataset: seeded, synthetic squat recordings with good form and three faults.

Each sequence is 8 joint-angle channels (hip, knee and ankle flexion plus knee abduction, left and right)
over 100 frames of 2-4 repetitions. Sequences come from simulated subjects, about 10 each: a subject's
depth, tempo range, time spent at the bottom, posture (sensor placement) offsets, noise level and
natural asymmetry are shared by all its sequences, and train, val and test have disjoint subjects, so
scores measure how a model does on people it has not seen. The faults are deliberately subtle against
that variation, so a classifier has to learn the shape of the movement rather than its size: the default
model climbs over tens of epochs instead of saturating in the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aqtrack.data.dataset import ActionQualityData, Split

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
SEQUENCES_PER_SUBJECT = 10
# Flexion amplitude of hip, knee and ankle relative to the knee's, for a full-depth squat.
JOINT_GAIN = np.array([0.9, 1.0, 0.45])


def generate(n_train: int, n_val: int, seed: int, n_test: int = 0) -> ActionQualityData:
    """`n_train` + `n_val` (+ `n_test`; 0 = no test split) sequences, deterministic for a given `seed`.

    Classes are balanced within each split and no subject is in two splits. Each split has its own
    random stream, so a split's sequences do not change with the sizes of the others.
    """
    streams = np.random.SeedSequence(seed).spawn(3)
    splits: dict[str, Split] = {}
    first_subject = 0
    for name, n, stream in zip(("train", "val", "test"), (n_train, n_val, n_test), streams, strict=True):
        if n > 0:
            splits[name] = _split(name, n, first_subject, np.random.default_rng(stream))
            first_subject += len(np.unique(splits[name].subjects))
    return ActionQualityData(
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        class_names=CLASS_NAMES,
        channel_names=CHANNELS,
        source="synthetic",
        split_info={
            "method": "synthetic",
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_test,
            "sequences_per_subject": SEQUENCES_PER_SUBJECT,
            "seed": seed,
        },
    )


def _split(name: str, n: int, first_subject: int, rng: np.random.Generator) -> Split:
    y = rng.permutation(np.arange(n) % len(CLASS_NAMES))  # balanced classes, in random order
    n_subjects = math.ceil(n / SEQUENCES_PER_SUBJECT)
    subject = np.arange(n) * n_subjects // n  # consecutive sequences, evenly many per subject
    traits = _Traits.draw(n_subjects, rng)
    return Split(
        x=_sequences(y, subject, traits, rng),
        y=y.astype(np.int64),
        lengths=np.full(n, SEQ_LEN, dtype=np.int64),
        sample_ids=np.array([f"{name}-{i}" for i in range(n)]),
        subjects=np.array([f"s{first_subject + s:03d}" for s in subject]),
        metadata={},
    )


@dataclass(frozen=True)
class _Traits:
    """What a subject brings to every sequence it records; arrays over subjects [S, 1] or [S, 1, C]."""

    depth: np.ndarray  # natural squat depth
    tempo: np.ndarray  # slowest tempo (repetitions per sequence); each sequence is up to 0.8 faster
    shape: np.ndarray  # how long the subject stays near the bottom
    posture: np.ndarray  # sensor placement offsets per channel [S, 1, C]
    noise: np.ndarray  # sensor noise level [S, 1, 1]
    lag: np.ndarray  # natural left/right asymmetry
    valgus: np.ndarray  # natural knock-knee

    @classmethod
    def draw(cls, n: int, rng: np.random.Generator) -> _Traits:
        return cls(
            depth=rng.uniform(0.8, 1.2, (n, 1)),
            tempo=rng.uniform(2.0, 3.2, (n, 1)),
            shape=rng.uniform(0.85, 1.35, (n, 1)),
            posture=rng.normal(0.0, 0.1, (n, 1, len(CHANNELS))),
            noise=rng.uniform(0.06, 0.15, (n, 1, 1)),
            lag=rng.normal(0.0, 0.01, (n, 1)),
            valgus=rng.uniform(0.0, 0.05, (n, 1)),
        )


def _sequences(y: np.ndarray, subject: np.ndarray, traits: _Traits, rng: np.random.Generator) -> np.ndarray:
    n = len(y)
    t = np.linspace(0.0, 1.0, SEQ_LEN)[None, :]  # [1, T]
    # A subject's traits, varied a little from one recording to the next.
    reps = traits.tempo[subject] + rng.uniform(0.0, 0.8, (n, 1))
    phase = rng.uniform(0.0, 1.0, (n, 1))
    depth = traits.depth[subject] * rng.uniform(0.95, 1.05, (n, 1))
    shape = traits.shape[subject] + rng.normal(0.0, 0.05, (n, 1))

    # Everyone is a little asymmetric and a little knock-kneed; the faults are more of the same.
    lag = traits.lag[subject] + np.where(y == 2, rng.uniform(0.03, 0.08, n), 0.0)[:, None]
    weak = np.where(y == 2, rng.uniform(0.88, 0.98, n), 1.0)[:, None]  # and a little shallower
    valgus = traits.valgus[subject] + np.where(y == 3, rng.uniform(0.05, 0.15, n), 0.0)[:, None]
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

    posture = traits.posture[subject] + rng.normal(0.0, 0.02, (n, 1, len(CHANNELS)))  # re-placed sensors
    drift = np.cumsum(rng.normal(0.0, 0.01, x.shape), axis=1)
    noise = rng.normal(0.0, 1.0, x.shape) * traits.noise[subject] * rng.uniform(0.9, 1.1, (n, 1, 1))
    return (x + posture + drift + noise).astype(np.float32)


def _cycle(progress: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Squat depth over a repetition: 0 standing, 1 at the bottom; `shape` > 1 dwells at the bottom."""
    return ((1.0 - np.cos(2.0 * np.pi * progress)) / 2.0) ** (1.0 / shape)
