"""Independent vs product (ηλ, η) parametrization on a synthetic objective."""

import math

import pytest

from experiments import compare
from keras_normreg.tuning import space as S

PRODUCT = {"parametrization": "product", "decay": ["decoupled"],
           "learning_rate": {"min": 0.01, "max": 1.0}, "eta_lambda": {"min": 1e-6, "max": 1e-2}}


def ridge(point):
    """Scale-invariant-like objective: the score depends on ηλ (optimum 1e-4), barely on η."""
    return (1.0 - 0.5 * (math.log10(point["eta_lambda"]) + 4.0) ** 2
            - 0.002 * (math.log10(point["learning_rate"]) + 1.0) ** 2)


def test_trials_to_target_by_hand():
    assert compare.trials_to_target([0.1, 0.5, 0.9, 0.95], 0.9) == 3
    assert compare.trials_to_target([0.1, 0.5], 0.9) is None
    assert compare.trials_to_target([], 0.9) is None
    assert compare.trials_to_target([3.0, float("nan"), 1.0, 0.5], 1.0, "min") == 3


def test_covering_spaces_by_hand():
    ind = compare.covering_space(PRODUCT, "independent")
    # λ = ηλ/η covers [1e-6 / 1, 1e-2 / 0.01]
    assert ind["parametrization"] == "independent"
    assert ind["lambda"]["min"] == pytest.approx(1e-6) and ind["lambda"]["max"] == pytest.approx(1.0)
    back = compare.covering_space(ind, "product")
    # ηλ = λη covers [1e-6 * 0.01, 1.0 * 1.0]
    assert back["eta_lambda"]["min"] == pytest.approx(1e-8)
    assert back["eta_lambda"]["max"] == pytest.approx(1.0)
    assert compare.covering_space(PRODUCT, "product") == S.resolve_space(PRODUCT)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_search_scores_are_reproducible():
    a = compare.search_scores(ridge, PRODUCT, budget=5, seed=3)
    b = compare.search_scores(ridge, PRODUCT, budget=5, seed=3)
    assert len(a) == 5 and a == b


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_product_needs_fewer_trials_on_a_ridge():
    result = compare.compare_parametrizations(ridge, PRODUCT, target=0.99, budget=40,
                                              seeds=range(8))
    ind, prod = result["independent"], result["product"]
    assert len(ind["trials"]) == len(prod["trials"]) == 8
    assert result["budget"] == 40 and result["target"] == 0.99
    # score >= 0.99 needs |log10(ηλ) + 4| < ~0.14: a 0.28-decade band, 7% of the product box's
    # 4-decade ηλ axis (~14 trials expected), but only ~0.28 * 2 / (6 * 2) = 4.7% of the
    # covering independent box (λ over 6 decades x η over 2): ~21 trials expected.
    assert prod["mean_censored"] < 0.6 * ind["mean_censored"]
    assert prod["reached"] >= ind["reached"]
    for summary in (ind, prod):
        for n in summary["trials"]:
            assert n is None or 1 <= n <= 40


def test_compare_errors():
    with pytest.raises(ValueError, match=r"needs a decay mode with λ"):
        compare.compare_parametrizations(ridge, {"decay": ["none"]}, target=0.9, budget=3)
    with pytest.raises(ValueError, match=r"Argument `other` must use parametrization="
                                         r"'independent'"):
        compare.compare_parametrizations(ridge, PRODUCT, target=0.9, budget=3, other=PRODUCT)
    with pytest.raises(ValueError, match=r"Received: tuner='grid'"):
        compare.search_scores(ridge, PRODUCT, budget=3, seed=0, tuner="grid")
    with pytest.raises(ValueError, match=r"Received: direction='up'"):
        compare.trials_to_target([1.0], 0.5, "up")
    with pytest.raises(ValueError, match=r"Received: parametrization='x'"):
        compare.covering_space(PRODUCT, "x")
