"""benchmarks/ratios.py's judgement: a distribution-free interval for the median pair
ratio, and a --check that says when the machine cannot tell a ratio from its target."""

import math
import random

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def ratios():
    return load_script("benchmarks/ratios.py")


def test_the_interval_holds_the_median_as_often_as_it_says(ratios):
    rng = random.Random(0)
    for n in (6, 9, 20):
        held = 0
        for _ in range(4000):
            values = [rng.lognormvariate(0.5, 0.3) for _ in range(n)]  # true median e^0.5
            _, lo, hi = ratios.median_interval(values)
            held += lo <= math.exp(0.5) <= hi
        assert held / 4000 >= 0.94, (n, held)


def test_too_few_pairs_give_no_interval(ratios):
    assert ratios.median_interval([1.0, 1.1, 1.2, 1.3, 1.4])[1:] == (None, None)
    assert ratios.median_interval([1.0, 1.1, 1.2, 1.3, 1.4, 1.5])[1:] == (1.0, 1.5)


@pytest.mark.parametrize("lo, hi, verdict", [(1.5, 1.8, "ok"), (2.0, 2.6, "missed"),
                                             (1.7, 2.4, "unclear"), (None, None, "unclear")])
def test_a_ratio_is_judged_only_when_its_interval_is_on_one_side(ratios, lo, hi, verdict):
    assert ratios.judge(lo, hi, 1.9) == verdict


def test_check_refuses_to_judge_a_noisy_ratio_with_one_line(ratios):
    measure = ratios.measures(quick=True)[0][0]  # causal MonArc / CE, target 1.9
    noisy = {"ratio": 2.29, "lo": 1.62, "hi": 2.64, "verdict": "unclear"}
    quiet = {"ratio": 1.70, "lo": 1.65, "hi": 1.74, "verdict": "ok"}
    code, line = ratios.verdict_line([(measure, quiet), (measure, noisy)])
    assert code == 2 and "\n" not in line
    assert "too noisy" in line and "2.29 (1.62-2.64) vs <= 1.9" in line
    assert ratios.verdict_line([(measure, quiet)])[0] == 0
    missed = dict(noisy, lo=2.1, verdict="missed")
    assert ratios.verdict_line([(measure, missed), (measure, noisy)])[0] == 1
