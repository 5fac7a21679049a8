"""aqtrack.config: validation messages, the flat dict round-trip, field metadata and `resumed`."""

from __future__ import annotations

from typing import Any

import pytest

from aqtrack.config import (
    RESUMABLE,
    Config,
    check_values,
    config_fields,
    cv_resumed,
    flag,
    forked,
    parse_int,
    resumed,
)
from aqtrack.errors import ConfigError

INVALID = [
    ({"rounds": 0}, "rounds", 0),
    ({"epochs_per_round": 0}, "epochs_per_round", 0),
    ({"lr": -1}, "lr", -1),
    ({"lr": 0}, "lr", 0),
    ({"min_lr": -1}, "min_lr", -1),
    ({"lr": 0.001, "min_lr": 0.01}, "min_lr", 0.01),
    ({"batch_size": 0}, "batch_size", 0),
    ({"checkpoint_interval": 0}, "checkpoint_interval", 0),
    ({"max_grad_norm": 0}, "max_grad_norm", 0),
    ({"num_workers": -1}, "num_workers", -1),
    ({"dropout": 1.0}, "dropout", 1.0),
    ({"val_fraction": 0}, "val_fraction", 0),
    ({"val_fraction": 1}, "val_fraction", 1),
    ({"optimizer": "sgd"}, "optimizer", "sgd"),
    ({"t_mult": 0}, "t_mult", 0),
    ({"hidden": 0}, "hidden", 0),
    ({"device": "tpu"}, "device", "tpu"),
    ({"amp": "fp8"}, "amp", "fp8"),
    ({"svm_c": 0}, "svm_c", 0),
    ({"svm_kernel": "cubic"}, "svm_kernel", "cubic"),
    ({"svm": 1}, "svm", 1),  # a bool setting takes a bool, not a truthy number
    ({"rounds": True}, "rounds", True),  # and a number setting no bool
    ({"log_model": False, "register": "net"}, "register", "net"),  # only a logged network registers
]


@pytest.mark.parametrize(
    ("settings", "name", "value"), INVALID, ids=[f"{name}={value!r}" for _, name, value in INVALID]
)
def test_invalid_setting_is_refused_naming_flag_and_value(settings: dict, name: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(settings)
    message = str(info.value)
    assert message.startswith(flag(name) + " "), message
    assert f"(got {value!r})" in message
    assert "\n" not in message


def test_min_lr_above_lr_message_names_both_flags() -> None:
    with pytest.raises(ConfigError, match=r"--min-lr must be <= --lr \(0\.001\)"):
        Config.from_dict({"lr": 0.001, "min_lr": 0.01})


def test_from_dict_refuses_unknown_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*epochs") as info:
        Config.from_dict({"epochs": 5, "rounds": 2})
    assert "rounds" in str(info.value)  # the known names are listed, so the user can spot the typo


def test_to_dict_from_dict_round_trips() -> None:
    cfg = Config.from_dict(
        {"data": "runs.npz", "hidden": 16, "lr": 0.01, "optimizer": "adam", "rounds": 5, "run_name": "x"}
    )
    flat = cfg.to_dict()
    assert Config.from_dict(flat) == cfg
    assert flat["hidden"] == 16 and flat["optimizer"] == "adam" and flat["run_name"] == "x"
    assert list(flat) == [name for _, name, _ in config_fields()]


def test_every_field_has_help_text() -> None:
    missing = [name for _, name, f in config_fields() if not f.metadata.get("help", "").strip()]
    assert missing == []


def test_field_names_are_unique_across_sections() -> None:
    names = [name for _, name, _ in config_fields()]
    assert len(names) == len(set(names))


def test_defaults_are_valid_and_match_field_defaults() -> None:
    defaults = Config().to_dict()
    assert defaults == {name: f.default for _, name, f in config_fields()}


SAVED = {"lr": 0.01, "hidden": 16, "rounds": 2, "batch_size": 16}


def test_resumed_keeps_the_checkpoint_settings() -> None:
    saved = Config.from_dict(SAVED)
    assert resumed(saved, {}) == saved


def test_resumed_applies_a_raised_rounds() -> None:
    saved = Config.from_dict(SAVED)
    cfg = resumed(saved, {"rounds": 5})
    assert cfg.train.rounds == 5
    assert cfg == saved.replace(rounds=5)


def test_resumed_accepts_unchanged_non_resumable_settings() -> None:
    saved = Config.from_dict(SAVED)
    assert resumed(saved, {"lr": 0.01, "hidden": 16}) == saved


@pytest.mark.parametrize(
    ("name", "value"), [("lr", 0.02), ("hidden", 32), ("data", "other.npz"), ("batch_size", 64)]
)
def test_resumed_refuses_a_changed_non_resumable_setting(name: str, value: Any) -> None:
    assert name not in RESUMABLE
    saved = Config.from_dict(SAVED)
    with pytest.raises(ConfigError, match="when resuming") as info:
        resumed(saved, {name: value, "rounds": 5})
    message = str(info.value)
    assert f"{flag(name)}={value!r}" in message
    assert f"(the run has {saved.to_dict()[name]!r})" in message
    assert "\n" not in message


def test_resumed_applies_a_given_rounds_even_when_it_equals_the_default() -> None:
    # The headline fault: `-P rounds=3` on a 2-round run was taken for "not given" (3 is the default).
    saved = Config.from_dict(SAVED)
    assert Config().train.rounds == 3 != saved.train.rounds
    assert resumed(saved, {"rounds": 3}).train.rounds == 3


def test_resumed_refuses_a_given_value_equal_to_its_default_that_changes_the_run() -> None:
    saved = Config.from_dict(SAVED)
    with pytest.raises(ConfigError, match=r"--lr=0\.001 \(the run has 0\.01\)"):
        resumed(saved, {"lr": Config().train.lr})


def test_resumed_error_points_to_a_fork_for_changing_other_settings() -> None:
    with pytest.raises(ConfigError, match=r"--fork RUN_ID --fork-epoch N"):
        resumed(Config.from_dict(SAVED), {"lr": 0.05})


def test_forked_changes_any_setting_but_the_data_and_the_network_shape() -> None:
    saved = Config.from_dict(SAVED)
    cfg = forked(saved, {"lr": 5e-4, "batch_size": 8, "dropout": 0.0, "optimizer": "adam", "hidden": 16})
    assert (cfg.train.lr, cfg.train.batch_size, cfg.model.dropout) == (5e-4, 8, 0.0)
    assert cfg.train.optimizer == "adam" and cfg.model.hidden == 16
    for name, value in (("hidden", 32), ("data", "other.npz"), ("n_train", 5), ("data_seed", 1)):
        with pytest.raises(ConfigError, match="in a fork") as info:
            forked(saved, {name: value})
        assert f"{flag(name)}={value!r}" in str(info.value)


def test_check_values_checks_each_given_setting_alone() -> None:
    check_values({"rounds": 3, "lr": 1e-7})  # lr below the default min_lr is fine on its own
    with pytest.raises(ConfigError, match=r"^--rounds must be >= 1 \(got 0\)$") as info:
        check_values({"rounds": 0})
    assert info.value.setting == "rounds"
    with pytest.raises(ConfigError, match="unknown setting"):
        check_values({"round": 3})


@pytest.mark.parametrize(("text", "value"), [("3", 3), ("3.0", 3), ("-2", -2), ("1e2", 100)])
def test_parse_int_takes_whole_numbers_as_mlflow_passes_them(text: str, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["1.5", "abc", "", "nan"])
def test_parse_int_refuses_what_is_not_a_whole_number(text: str) -> None:
    with pytest.raises(ValueError, match="expected a whole number"):
        parse_int(text)


def test_resumed_refuses_unknown_names_with_config_error() -> None:
    with pytest.raises(ConfigError, match="epochs"):
        resumed(Config(), {"epochs": 5})


def test_cv_resumed_changes_only_what_no_fold_measures() -> None:
    saved = Config.from_dict({**SAVED, "folds": "5"})
    assert cv_resumed(saved, {"output_dir": "elsewhere", "lr": 0.01}).run.output_dir == "elsewhere"
    for name, value in (("rounds", 3), ("svm_c", 2.0), ("folds", "loso")):
        with pytest.raises(
            ConfigError, match=f"cannot change {flag(name)}=.* when resuming a cross-validation"
        ):
            cv_resumed(saved, {name: value})
