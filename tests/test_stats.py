"""Paired statistics: identical models are not told apart, a clear gain is, and the numbers match scipy's own."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.evaluation import stats


def binary(p: float, n: int, seed: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).random(n) < p]


def test_two_identical_models_show_no_significant_difference():
    scores = binary(0.4, 60, seed=1)
    c = stats.compare(scores, list(scores), "exact_match", "base", "finetuned")
    assert c.verdict == "no significant difference"
    assert (c.difference, c.ci_low, c.ci_high, c.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert c.test == "McNemar exact" and (c.gained, c.lost) == (0, 0)
    assert "no significant difference at this sample size** (n = 60)" in c.sentence()


def test_two_identical_continuous_models_show_no_significant_difference():
    scores = list(np.random.default_rng(2).random(50))
    c = stats.compare(scores, list(scores), "token_f1")
    assert c.verdict == "no significant difference" and c.p_value == 1.0 and c.test == "paired permutation"


def test_a_clear_gain_is_better_with_an_interval_above_zero():
    base, tuned = binary(0.2, 60, seed=3), binary(0.8, 60, seed=4)
    c = stats.compare(base, tuned, "exact_match", "base", "finetuned")
    assert c.verdict == "better" and c.ci_low > 0 and c.p_value < 0.001
    assert c.difference == pytest.approx(np.mean(tuned) - np.mean(base))
    assert c.gained - c.lost == round(c.difference * 60)
    assert "**better**" in c.sentence()


def test_a_clear_loss_is_worse_with_an_interval_below_zero():
    rng = np.random.default_rng(5)
    base = rng.random(40)
    tuned = np.clip(base - 0.3 + rng.normal(0, 0.05, 40), 0, 1)
    c = stats.compare(list(base), list(tuned), "token_f1")
    assert c.verdict == "worse" and c.ci_high < 0 and c.p_value < 0.01


def test_mcnemar_p_value_is_the_exact_binomial_on_discordant_pairs():
    from scipy.stats import binomtest

    base = [1.0] * 3 + [0.0] * 9 + [1.0] * 10 + [0.0] * 18
    tuned = [0.0] * 3 + [1.0] * 9 + [1.0] * 10 + [0.0] * 18
    c = stats.compare(base, tuned, "exact_match")
    assert (c.gained, c.lost) == (9, 3)
    assert c.p_value == pytest.approx(binomtest(9, 12, 0.5).pvalue)
    assert c.verdict == "no significant difference"  # p = 0.146: 12 discordant pairs are too few


def test_an_inconclusive_small_gain_estimates_the_examples_that_would_resolve_it():
    base = [1.0] * 3 + [0.0] * 9 + [1.0] * 10 + [0.0] * 18
    tuned = [0.0] * 3 + [1.0] * 9 + [1.0] * 10 + [0.0] * 18
    c = stats.compare(base, tuned, "exact_match")
    # Connor's formula: discordant share 0.3, difference 0.15 -> about 104 examples.
    assert 90 < c.examples_needed < 120
    assert f"about {c.examples_needed} held-out examples would resolve" in c.sentence()
    # The same pattern repeated to at least that many examples is significant.
    k = -(-c.examples_needed // 40)
    more = stats.compare(base * k, tuned * k, "exact_match")
    assert more.verdict == "better"


def test_results_are_reproducible():
    rng = np.random.default_rng(6)
    a, b = list(rng.random(30)), list(rng.random(30))
    assert stats.compare(a, b, "token_f1") == stats.compare(a, b, "token_f1")


def test_every_pair_of_sections_is_compared_on_shared_metrics():
    scores = {
        "base": {"exact_match": [0.0, 1.0, 0.0], "token_f1": [0.1, 1.0, 0.2]},
        "few_shot": {"exact_match": [1.0, 1.0, 0.0]},
        "finetuned": {"exact_match": [1.0, 1.0, 1.0], "token_f1": [1.0, 1.0, 1.0]},
    }
    pairs = [
        (c.reference, c.candidate, c.metric) for c in stats.compare_sections(scores, ["base", "few_shot", "finetuned"])
    ]
    assert pairs == [
        ("base", "few_shot", "exact_match"),
        ("base", "finetuned", "exact_match"),
        ("base", "finetuned", "token_f1"),
        ("few_shot", "finetuned", "exact_match"),
    ]


def test_unpaired_lists_are_refused():
    with pytest.raises(ValueError, match="equally long"):
        stats.compare([1.0, 0.0], [1.0], "exact_match")
