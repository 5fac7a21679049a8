"""The data settings added for real recordings: n_test, test_fraction and missing are checked and named."""

from __future__ import annotations

from typing import Any

import pytest

from aqtrack.config import Config, DataConfig
from aqtrack.data.dataset import load_configured
from aqtrack.errors import ConfigError


def test_defaults_make_a_test_split_and_interpolate_missing_values() -> None:
    cfg = DataConfig()
    assert (cfg.n_test, cfg.test_fraction, cfg.missing) == (200, 0.2, "interpolate")


@pytest.mark.parametrize(
    ("settings", "flag", "value"),
    [
        ({"n_test": -1}, "--n-test", -1),
        ({"test_fraction": -0.1}, "--test-fraction", -0.1),
        ({"test_fraction": 1.0}, "--test-fraction", 1.0),
        ({"missing": "zeros"}, "--missing", "zeros"),
        ({"n_test": 1.5}, "--n-test", 1.5),
    ],
)
def test_invalid_data_setting_is_refused_naming_its_flag(settings: dict, flag: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=flag) as info:
        Config.from_dict(settings)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("settings", [{"n_test": 0}, {"test_fraction": 0.0}, {"missing": "refuse"}])
def test_zero_test_and_refuse_are_valid(settings: dict) -> None:
    Config.from_dict(settings)


def test_load_configured_passes_the_new_settings(tmp_path) -> None:
    cfg = DataConfig(n_train=8, n_val=4, n_test=0, missing="refuse")
    data = load_configured(cfg)
    assert data.test is None and data.missing_policy == "refuse"
    assert load_configured(DataConfig(n_train=8, n_val=4, n_test=4)).test.y.shape == (4,)
