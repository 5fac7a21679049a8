"""aqtrack.outputs.report's append-only encoder writes exactly what json.dumps would, epoch after epoch."""

from __future__ import annotations

import json
import math

import pytest

from aqtrack.outputs.report import AppendOnlyEncoder


def reports(epochs: int):
    for n in range(epochs + 1):
        yield {
            "control_losses": [1.0 / (e + 1) for e in range(n)],
            "batch_losses": [0.5 + e / 7 for e in range(3 * n)],
            "learning_rates": [None if e == 2 else 1e-3 for e in range(n)],
            "current_epoch": n,
            "dataset_stats": {"classes": ["good_form", "knee_valgus"], "n": [3, 4]},
            "empty": [],
        }


def test_growing_reports_encode_exactly_like_json_dumps():
    encoder = AppendOnlyEncoder()
    for report in reports(12):
        assert encoder.encode(report) == json.dumps(report)


def test_a_list_that_changed_instead_of_growing_is_encoded_again():
    encoder = AppendOnlyEncoder()
    encoder.encode({"x": [1.0, 2.0, 3.0]})
    assert encoder.encode({"x": [1.0, 2.5, 3.0, 4.0]}) == json.dumps({"x": [1.0, 2.5, 3.0, 4.0]})
    assert encoder.encode({"x": [9.0]}) == json.dumps({"x": [9.0]})
    assert encoder.encode({"x": [8.0, 9.0]}) == json.dumps({"x": [8.0, 9.0]})


def test_a_non_finite_value_is_refused_like_json_dumps_with_allow_nan_false():
    encoder = AppendOnlyEncoder()
    encoder.encode({"x": [1.0]})
    with pytest.raises(ValueError):
        encoder.encode({"x": [1.0, math.nan]})
