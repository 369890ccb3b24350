import pytest

from keras_normreg._utils import check_bool, check_choice, check_number


def test_check_number_accepts_and_returns():
    assert check_number("lr", 0.1, low=0, low_inclusive=False) == 0.1
    assert check_number("k", 3, low=1, integer=True) == 3
    assert check_number("x", None, allow_none=True) is None


@pytest.mark.parametrize("kwargs, value, pattern", [
    ({"low": 0, "low_inclusive": False}, 0.0, r"`lr` must be > 0\. Received: lr=0\.0"),
    ({"low": 0}, -1, r"`lr` must be >= 0\. Received: lr=-1"),
    ({"high": 1, "high_inclusive": False}, 1.0, r"`lr` must be < 1\. Received: lr=1\.0"),
    ({}, "0.1", r"`lr` must be a number\. Received: lr='0\.1'"),
    ({}, True, r"`lr` must be a number\. Received: lr=True"),
    ({"integer": True}, 2.5, r"`lr` must be an integer\. Received: lr=2\.5"),
])
def test_check_number_errors(kwargs, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_number("lr", value, **kwargs)


def test_check_choice_and_bool():
    assert check_choice("mode", "a", ["a", "b"]) == "a"
    with pytest.raises(ValueError, match=r"`mode` must be one of \['a', 'b'\]\. Received: mode='c'"):
        check_choice("mode", "c", ["a", "b"])
    with pytest.raises(ValueError, match=r"`flag` must be a bool\. Received: flag=1"):
        check_bool("flag", 1)


def test_environ_sets_and_restores(monkeypatch):
    import os

    from keras_normreg._utils import environ

    monkeypatch.setenv("KNR_A", "old")
    monkeypatch.delenv("KNR_B", raising=False)
    with environ({"KNR_A": "new", "KNR_B": 7}):
        assert os.environ["KNR_A"] == "new" and os.environ["KNR_B"] == "7"
    assert os.environ["KNR_A"] == "old"
    assert "KNR_B" not in os.environ


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_check_number_refuses_non_finite(value):
    # without a bound, and with bounds NaN compares False to (a bound alone let it through)
    for kwargs in ({}, {"low": 0.0, "high": 1.0}):
        with pytest.raises(ValueError) as e:
            check_number("momentum", value, **kwargs)
        assert str(e.value) == (f"Argument `momentum` must be a finite number. "
                                f"Received: momentum={value}")


def test_check_number_numpy_scalars():
    import numpy as np

    assert check_number("x", np.float32(0.5), low=0) == np.float32(0.5)
    with pytest.raises(ValueError, match="finite number. Received: x=nan"):
        check_number("x", np.float64("nan"))


def test_check_number_allow_inf():
    inf = float("inf")
    assert check_number("max_norm", inf, low=0, allow_inf=True) == inf
    with pytest.raises(ValueError, match=r"must be >= 0. Received: x=-inf"):
        check_number("x", -inf, low=0, allow_inf=True)  # the bounds still apply
    with pytest.raises(ValueError, match=r"must be a number \(not NaN\). Received: x=nan"):
        check_number("x", float("nan"), allow_inf=True)
