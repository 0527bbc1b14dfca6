"""Paired statistics over per-example scores: is one section (base, few-shot, fine-tuned, a compared model) really
better than another on the same held-out examples, or is the difference noise at this sample size?

For each metric and each pair of sections scored on the same examples:

- the difference of the means with a percentile bootstrap 95% confidence interval (``scipy.stats.bootstrap`` over
  the per-example differences);
- a paired test: McNemar's exact test for 0/1 metrics (``scipy.stats.binomtest`` on the discordant pairs), a paired
  permutation test (``scipy.stats.permutation_test``, signs of the per-example differences flipped) otherwise;
- a verdict: better, worse, or no significant difference at this sample size, with roughly how many examples
  would make the observed difference significant (two-sided 5%, 80% power).

Every resampling is seeded (:data:`SEED`), so a report rebuilt from the same examples is identical.
Scores follow the metric contract in :mod:`trainer.evaluation.metrics`: higher is better.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: Seed of every bootstrap and permutation resampling (reproducible reports).
SEED = 20240601
ALPHA = 0.05
POWER = 0.80
RESAMPLES = 9999


@dataclass
class Comparison:
    """``candidate`` against ``reference`` (e.g. finetuned against base) on one metric, paired by example."""

    metric: str
    reference: str
    candidate: str
    n: int
    reference_mean: float
    candidate_mean: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    #: better / worse / no significant difference
    verdict: str
    #: Inconclusive results: about how many examples would make the observed difference significant
    #: (None when the difference is 0, or the result is already significant).
    examples_needed: int | None = None
    #: 0/1 metrics: examples that went wrong -> right and right -> wrong from reference to candidate.
    gained: int | None = None
    lost: int | None = None

    def sentence(self, names: dict[str, str] | None = None) -> str:
        names = names or {}
        cand, ref = names.get(self.candidate, self.candidate), names.get(self.reference, self.reference)
        head = (
            f"{cand} vs {ref} on {self.metric}: {self.reference_mean:.4f} -> {self.candidate_mean:.4f}, "
            f"difference {self.difference:+.4f} (95% CI {interval(self.ci_low, self.ci_high)}; "
            f"{self.test} p {p_text(self.p_value)}; n = {self.n})"
        )
        if self.verdict != "no significant difference":
            return f"{head}: **{self.verdict}**."
        tail = f"**no significant difference at this sample size** (n = {self.n})"
        if self.examples_needed is not None:
            tail += f"; about {self.examples_needed} held-out examples would resolve a difference of this size"
        elif self.difference == 0:
            tail += "; the two score exactly the same on average"
        return f"{head}: {tail}."

    def to_dict(self) -> dict:
        return asdict(self)


def interval(low: float, high: float) -> str:
    """A confidence interval as every report writes it: ``+0.1000 to +0.3000``."""
    return f"{low:+.4f} to {high:+.4f}"


def format_p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def p_text(p: float) -> str:
    """``= 0.0312`` or ``< 0.0001``, to follow a 'p'."""
    return "< 0.0001" if p < 1e-4 else f"= {p:.4f}"


def is_binary(values) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def compare(
    reference: list[float],
    candidate: list[float],
    metric: str,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    seed: int = SEED,
    resamples: int = RESAMPLES,
) -> Comparison:
    """Paired comparison of two score lists over the same examples (same order, same length)."""
    from scipy import stats

    a, b = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"{metric}: paired scores need two equally long, non-empty lists ({a.shape} vs {b.shape})")
    d = b - a
    n, diff = len(d), float(d.mean())
    binary = is_binary(a) and is_binary(b)
    gained = lost = None
    if np.all(d == d[0]):  # every example differs by the same amount (often 0): no sampling variability
        low = high = diff
    else:
        ci = stats.bootstrap(
            (d,), np.mean, n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed)
        ).confidence_interval
        low, high = float(ci.low), float(ci.high)
    if binary:
        gained, lost = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
        p = 1.0 if gained + lost == 0 else float(stats.binomtest(gained, gained + lost, 0.5).pvalue)
        test = "McNemar exact"
    elif np.all(d == 0):
        p, test = 1.0, "paired permutation"
    else:
        p = float(
            stats.permutation_test(
                (d,),
                np.mean,
                permutation_type="samples",
                n_resamples=resamples,
                vectorized=True,
                rng=np.random.default_rng(seed),
            ).pvalue
        )
        test = "paired permutation"
    if p < ALPHA and diff != 0:
        verdict = "better" if diff > 0 else "worse"
        needed = None
    else:
        verdict = "no significant difference"
        needed = examples_needed(d, binary)
    return Comparison(
        metric=metric,
        reference=reference_name,
        candidate=candidate_name,
        n=n,
        reference_mean=float(a.mean()),
        candidate_mean=float(b.mean()),
        difference=diff,
        ci_low=low,
        ci_high=high,
        p_value=p,
        test=test,
        verdict=verdict,
        examples_needed=needed,
        gained=gained,
        lost=lost,
    )


def against_chance(wins: list[float], chance: float = 0.5) -> float:
    """Two-sided exact binomial p-value of 0/1 outcomes against ``chance`` (a pair accuracy against a coin)."""
    from scipy import stats

    return float(stats.binomtest(int(sum(wins)), len(wins), chance).pvalue)


def examples_needed(d: np.ndarray, binary: bool) -> int | None:
    """Examples needed for a two-sided 5% test to detect the observed mean difference with 80% power, assuming
    the same spread of per-example differences (0/1 metrics: Connor's formula for McNemar's test, from the share
    of discordant examples; otherwise the normal approximation of the paired test)."""
    from scipy.stats import norm

    diff = float(d.mean())
    if diff == 0:
        return None
    z_a, z_b = norm.ppf(1 - ALPHA / 2), norm.ppf(POWER)
    if binary:
        discordant = float(np.mean(d != 0))
        n = (z_a * math.sqrt(discordant) + z_b * math.sqrt(max(discordant - diff**2, 0.0))) ** 2 / diff**2
    else:
        sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
        n = ((z_a + z_b) * sd / abs(diff)) ** 2
    return max(len(d) + 1, math.ceil(n))


def compare_sections(scores: dict[str, dict[str, list[float]]], order: list[str]) -> list[Comparison]:
    """Every pair of sections (earlier in ``order`` = reference) on every metric both have, over examples that
    both scored (a section evaluated on fewer examples is compared on the shared ones)."""
    out = []
    present = [s for s in order if s in scores]
    for i, ref in enumerate(present):
        for cand in present[i + 1 :]:
            for metric, ref_scores in scores[ref].items():
                cand_scores = scores[cand].get(metric)
                if not cand_scores:
                    continue
                n = min(len(ref_scores), len(cand_scores))
                if n == 0:
                    continue
                out.append(compare(ref_scores[:n], cand_scores[:n], metric, ref, cand))
    return out
