"""OpenAI's default-epochs rule and the billed-token formula, at their boundaries."""

from __future__ import annotations

import pytest

from launchers.cloud.pricing import billed_tokens, default_epochs, estimate


@pytest.mark.parametrize(
    ("n", "epochs"),
    [
        (1, 25),  # 100 // 1 = 100, capped at 25
        (3, 25),  # 100 // 3 = 33 -> 25
        (4, 25),  # 100 // 4 = 25
        (5, 20),
        (10, 10),
        (33, 3),  # 99 < 100: 100 // 33 = 3 (the cookbook's floor division)
        (34, 3),  # 102: the target range holds 3 epochs
        (8333, 3),  # 24999 <= 25000
        (8334, 2),  # 25002 > 25000: 25000 // 8334 = 2
        (12500, 2),
        (12501, 1),
        (25001, 1),  # 25000 // 25001 = 0, at least 1
        (1_000_000, 1),
    ],
)
def test_default_epochs_boundaries(n, epochs):
    assert default_epochs(n) == epochs


def test_default_epochs_keep_examples_times_epochs_in_range_where_possible():
    for n in range(34, 8334):
        assert 100 <= n * default_epochs(n) <= 25000
    for n in range(8334, 25001):
        assert n * default_epochs(n) <= 25000


def test_billed_tokens_cut_each_example_at_the_limit_and_pay_every_epoch():
    assert billed_tokens([10, 20, 30], limit=None, epochs=3) == 180
    assert billed_tokens([10, 20, 30], limit=20, epochs=3) == (10 + 20 + 20) * 3
    assert billed_tokens([20], limit=20, epochs=1) == 20
    assert billed_tokens([21], limit=20, epochs=1) == 20
    assert billed_tokens([], limit=20, epochs=5) == 0


def test_estimate_uses_config_epochs_or_the_rule_and_the_price_table():
    est = estimate("m", [100] * 10, 65536, "auto", {"m": 3.0})
    assert (est.epochs, est.epochs_source, est.billed_tokens) == (10, "default rule", 10_000)
    assert est.usd == pytest.approx(0.03)
    est = estimate("m", [100, 70_000], 65536, 2, {"m": 3.0})
    assert (est.epochs, est.epochs_source, est.over_limit) == (2, "config", 1)
    assert est.billed_tokens == (100 + 65536) * 2
    assert "truncated" in est.summary()
    est = estimate("unknown", [100], None, "auto", {"m": 3.0})
    assert est.usd is None and "no price for unknown" in est.summary()
