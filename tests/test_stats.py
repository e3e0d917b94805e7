import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lotterylab.analysis import seed_stats
from lotterylab.analysis.stats import (
    comparison_sentence,
    holm,
    mean_interval,
    pairwise_comparisons,
    welch,
)


def test_t_interval_matches_scipy():
    x = [0.61, 0.58, 0.66, 0.60]
    low, high = mean_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (low, high) == pytest.approx(ref, rel=1e-12)
    # by hand: t_{0.975, 3} = 3.182446, s = 0.034034, sqrt(4) = 2
    assert high - np.mean(x) == pytest.approx(3.182446 * 0.0340343 / 2, rel=1e-5)
    assert all(math.isnan(v) for v in mean_interval([0.5]))


def test_bootstrap_interval_agrees_with_scipys_percentile_bootstrap():
    x = np.array([0.2, 0.25, 0.31, 0.4, 0.42, 0.5, 0.55, 0.6])
    low, high = mean_interval(x, method="bootstrap", resamples=20_000)
    ref = stats.bootstrap(
        (x,), np.mean, n_resamples=20_000, method="percentile", random_state=1
    ).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.01) and high == pytest.approx(ref.high, abs=0.01)
    assert mean_interval(x, method="bootstrap") == mean_interval(x, method="bootstrap")
    with pytest.raises(ValueError, match="'jackknife'"):
        mean_interval(x, method="jackknife")


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    adjusted = holm([float("nan"), 0.02])
    assert math.isnan(adjusted[0]) and adjusted[1] == pytest.approx(0.02)


def test_welch_matches_scipy():
    a, b = [0.71, 0.69, 0.74], [0.52, 0.60, 0.49, 0.55]
    out = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert out["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert (out["low"], out["high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert out["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert math.isnan(welch([1.0, 1.0], [1.0, 1.0])["p"])  # no spread: no test


def _rows():
    values = {
        "px": [0.70, 0.72, 0.71],
        "snip": [0.69, 0.73, 0.70],
        "random": [0.40, 0.42, 0.41],
    }
    return pd.DataFrame(
        [
            {"density": 0.018, "series": m, "seed": s, "score": v}
            for m, vs in values.items()
            for s, v in enumerate(vs)
        ]
    )


def test_pairwise_comparisons_with_holm_and_sentences():
    table = pairwise_comparisons(_rows(), "score", ["density"], "series")
    assert [(r["a"], r["b"]) for r in table.to_dict("records")] == [
        ("px", "random"),
        ("px", "snip"),
        ("random", "snip"),
    ]
    raw = [
        stats.ttest_ind(x, y, equal_var=False).pvalue
        for x, y in (
            ([0.70, 0.72, 0.71], [0.40, 0.42, 0.41]),
            ([0.70, 0.72, 0.71], [0.69, 0.73, 0.70]),
            ([0.40, 0.42, 0.41], [0.69, 0.73, 0.70]),
        )
    ]
    assert table["p"].tolist() == pytest.approx(raw)
    assert table["p_holm"].tolist() == pytest.approx(holm(raw))
    assert table["separable"].tolist() == [True, False, True]
    rows = table.to_dict("records")
    assert comparison_sentence(rows[0], "98.20% sparsity").startswith(
        "px > random at 98.20% sparsity (p = "
    )
    assert comparison_sentence(rows[2], "x").startswith("snip > random at x")
    assert comparison_sentence(rows[1], "98.20% sparsity") == (
        "px vs snip not separable at 98.20% sparsity with 3 seeds"
    )


def test_seed_stats_carries_the_interval():
    summary = seed_stats(_rows(), ["score"], ["series"])
    px = summary[summary["series"] == "px"].iloc[0]
    ref = stats.t.interval(0.95, 2, loc=0.71, scale=stats.sem([0.70, 0.72, 0.71]))
    assert (px["score_ci_low"], px["score_ci_high"]) == pytest.approx(ref)
    boot = seed_stats(_rows(), ["score"], ["series"], interval="bootstrap")
    row = boot[boot["series"] == "px"].iloc[0]
    assert 0.70 - 1e-12 <= row["score_ci_low"] < row["score_ci_high"] <= 0.72 + 1e-12
