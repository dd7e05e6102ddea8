"""The shared configuration checks, fed the values a caller or a config file gets wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jitterline import checks
from jitterline.adjuster import FixedPolicy
from jitterline.errors import ConfigError


@pytest.mark.parametrize("flag", [True, False])
def test_a_bool_is_neither_a_number_nor_a_count(flag: bool) -> None:
    with pytest.raises(ConfigError, match=rf"rate={flag} is not a number"):
        checks.number("rate", flag, low=0.0, high=1.0)
    with pytest.raises(ConfigError, match=rf"burst={flag} is not an integer"):
        checks.count("burst", flag)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_nan_infinities_and_huge_ints_pass_no_bound(value: float) -> None:
    with pytest.raises(ConfigError, match="is outside"):
        checks.number("delay_ms", value)


@pytest.mark.parametrize("value", ["80", None, [80]])
def test_a_non_number_is_a_config_error_not_a_type_error(value: object) -> None:
    with pytest.raises(ConfigError, match="is not a number"):
        checks.number("target_ms", value, low=0.0)
    with pytest.raises(ConfigError, match="is not an integer"):
        checks.count("frames", value)


def test_numpy_scalars_pass_like_python_numbers() -> None:
    assert checks.number("jitter_ms", np.float32(2.5), low=0.0) == 2.5
    assert checks.number("jitter_ms", np.int64(3), low=0.0) == 3.0
    assert checks.count("frames", np.int64(7), low=1) == 7


def test_a_float_is_not_a_count() -> None:
    with pytest.raises(ConfigError, match=r"frames=2\.0 is not an integer"):
        checks.count("frames", 2.0)


def test_a_string_target_from_a_config_file_is_refused_by_a_policy() -> None:
    with pytest.raises(ConfigError, match="target_ms='80'"):
        FixedPolicy(target_ms="80")  # type: ignore[arg-type]


def test_bounds_are_inclusive_by_default() -> None:
    assert checks.number("ratio", 0, low=0.0, high=1.0) == 0.0
    assert checks.number("ratio", 1, low=0.0, high=1.0) == 1.0
    assert checks.count("frames", 1, low=1, high=5) == 1
    assert checks.count("frames", 5, low=1, high=5) == 5
    with pytest.raises(ConfigError, match=r"frames=6 is outside \[1, 5\]"):
        checks.count("frames", 6, low=1, high=5)


def test_above_and_below_make_the_bounds_strict() -> None:
    assert checks.number("q", 0.5, low=0.0, high=1.0, above=True, below=True) == 0.5
    with pytest.raises(ConfigError, match=r"q=0\.0 is outside \(0, 1\)"):
        checks.number("q", 0.0, low=0.0, high=1.0, above=True, below=True)
    with pytest.raises(ConfigError, match=r"q=1\.0 is outside \(0, 1\)"):
        checks.number("q", 1.0, low=0.0, high=1.0, above=True, below=True)


def test_message_names_value_range_unit_and_next_step() -> None:
    with pytest.raises(ConfigError) as caught:
        checks.number("timeout_s", -2.5, low=0.0, above=True, unit="s", hint="try 10.0")
    assert str(caught.value) == (
        "timeout_s=-2.5 is outside (0, inf) s; it must be a finite number in that range; try 10.0"
    )


def test_a_large_count_limit_is_written_in_full() -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1000000\]; it must be an integer"):
        checks.count("late_memory", -1, high=1_000_000)
