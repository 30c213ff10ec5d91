"""The shared argument checks: which values count as integers, numbers and choices."""

import numpy as np
import pytest

from ntkal.arguments import as_choice, as_float, as_int, as_optional_int, is_integer


class ConfigLikeError(Exception):
    pass


def test_is_integer_rejects_bool_and_accepts_numpy():
    assert is_integer(3) and is_integer(np.int64(3))
    assert not is_integer(True) and not is_integer(3.0) and not is_integer("3")


@pytest.mark.parametrize("bad", [True, 2.5, "4", None])
def test_as_int_refuses_non_integers_naming_the_argument(bad):
    with pytest.raises(ValueError, match="budget must be an integer"):
        as_int(bad, "budget")


def test_as_int_bounds_and_integral_floats():
    assert as_int(np.int32(5), "n", minimum=1) == 5
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        as_int(0, "n", minimum=1)
    with pytest.raises(ValueError, match="n must be <= 3, got 4"):
        as_int(4, "n", maximum=3)
    assert as_int(3.0, "n", integral_floats=True) == 3
    with pytest.raises(ValueError):
        as_int(3.5, "n", integral_floats=True)
    with pytest.raises(ConfigLikeError, match="k must be an integer"):
        as_int("x", "k", error=ConfigLikeError)
    assert as_optional_int(None, "n") is None


def test_as_float_bounds_strictness_and_strings():
    assert as_float(2, "ridge", minimum=0.0) == 2.0
    assert as_float(0.0, "ridge", minimum=0.0) == 0.0
    with pytest.raises(ValueError, match=r"eps must be > 0.0"):
        as_float(0.0, "eps", minimum=0.0, strict_minimum=True)
    with pytest.raises(ValueError, match=r"ridge must be >= 0.0"):
        as_float(-1, "ridge", minimum=0.0)
    for bad in (float("nan"), float("inf"), True, "1e-4"):
        with pytest.raises(ValueError, match="finite number"):
            as_float(bad, "lr")
    assert as_float("1e-4", "lr", numeric_strings=True) == 1e-4
    with pytest.raises(ValueError, match="lr must be a number"):
        as_float("fast", "lr", numeric_strings=True)


def test_as_choice():
    assert as_choice("dense", "engine", ("auto", "dense")) == "dense"
    with pytest.raises(ValueError, match=r"engine must be one of \('auto', 'dense'\), got 'fast'"):
        as_choice("fast", "engine", ("auto", "dense"))
    with pytest.raises(ValueError):
        as_choice(True, "flag", (1, 0))
