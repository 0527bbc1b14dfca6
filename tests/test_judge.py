"""LLM-as-judge against the fake provider: grades per example, pairwise in both orders (a position-biased judge's
verdicts cancel out), replies cached on rerun, and the cost estimated (and a budget enforced) before anything runs."""

from __future__ import annotations

import json
import re

import pytest

from tests.fake_provider import FakeProvider
from tests.helpers import compose
from tests.test_report import section
from trainer.config.errors import UserError
from trainer.evaluation import judge
from trainer.report import files as report_files

BASE_RIGHT, TUNED_RIGHT = [0, 1, 2], list(range(2, 20))  # of 30: 17 wins for the tuned model, 2 for the base


def fake_judge(messages: list[dict]) -> str:
    """Grades 5 for an answer equal to the reference, else 1; prefers the answer equal to the reference and, when
    both or neither are, always says A (a position bias that asking in both orders must cancel)."""
    text = messages[-1]["content"]
    reference = re.search(r"Reference answer:\n(.*?)\n\n", text).group(1)
    if "Answer to grade:" in text:
        return "5" if text.split("Answer to grade:\n", 1)[1] == reference else "Score: 1"
    a, b = re.search(r"Answer A:\n(.*?)\n\nAnswer B:\n(.*)", text, re.S).groups()
    return "B" if b == reference and a != reference else "A"


@pytest.fixture
def fake(monkeypatch):
    with FakeProvider(api_key="sk-judge") as provider:
        provider.judges["judge-1"] = fake_judge
        monkeypatch.setenv("JUDGE_KEY", "sk-judge")
        yield provider


def judge_cfg(fake, *overrides: str):
    cfg = compose(
        "eval.judge.model=judge-1",
        f"eval.judge.base_url={fake.openai_url}",
        "eval.judge.api_key_env=JUDGE_KEY",
        *overrides,
    )
    return cfg.eval.judge


def results() -> dict:
    return {"base": section(BASE_RIGHT, "base said"), "finetuned": section(TUNED_RIGHT, "tuned said")}


def test_judge_grades_both_orders_and_caches(fake, tmp_path):
    cfg = judge_cfg(fake)
    first = results()
    block = judge.run(cfg, first, tmp_path)
    # two sections graded, every pair asked in both orders; identical requests are asked once: on example 2 both
    # answers are the same, so its two gradings and its two orders are one request each
    assert fake.counters["chat.judge"] == 30 + 30 + 2 * 30 - 2
    assert first["finetuned"]["judge"] == pytest.approx(18 / 30) and first["base"]["judge"] == pytest.approx(3 / 30)
    assert first["finetuned"]["per_example"]["scores"]["judge"][2:4] == [1.0, 1.0]
    pairwise = block["pairwise"]
    # the position-biased "A" on equal answers is a tie once both orders are asked, never a win
    assert (pairwise["finetuned_wins"], pairwise["base_wins"], pairwise["ties"]) == (17, 2, 11)
    assert pairwise["p_value"] < 0.001 and block["unparsed"] == 0
    assert block["estimate"]["requests"] == 118 and block["estimate"]["cached"] == 0 and block["estimate"]["usd"] > 0

    again = results()
    block_again = judge.run(cfg, again, tmp_path)
    assert fake.counters["chat.judge"] == 118  # every reply came from the cache
    assert block_again["pairwise"] == pairwise and block_again["estimate"]["cached"] == 118
    assert again["finetuned"]["per_example"] == first["finetuned"]["per_example"]


def test_judge_scores_join_the_paired_statistics_and_the_report(fake, tmp_path):
    metrics = results()
    metrics["judge"] = judge.run(judge_cfg(fake), metrics, tmp_path / "cache")
    report_files.write_report(tmp_path, metrics, [], "judged")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    (c,) = [c for c in saved["comparisons"] if c["metric"] == "judge"]
    assert c["verdict"] == "better" and c["ci_low"] > 0  # grades of 1 or 5 only: 0/1 scores, McNemar
    md = (tmp_path / "report.md").read_text()
    assert "## LLM-as-judge" in md and "fine-tuned preferred on **17**, base on **2**" in md
    assert "LLM-as-judge" in (tmp_path / "report.html").read_text()


def test_judge_estimates_the_cost_and_sends_nothing_over_budget(fake, tmp_path):
    cfg = judge_cfg(fake, "eval.judge.max_usd=0.000001")
    with pytest.raises(
        UserError, match=r"would cost about \$0\.00 \(118 uncached requests to judge-1\).*Nothing was sent"
    ):
        judge.run(cfg, results(), tmp_path)
    assert fake.counters["chat.judge"] == 0


def test_judge_key_comes_from_the_environment_only(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(UserError, match="JUDGE_KEY, but that environment variable is not set"):
        judge.run(judge_cfg(fake), results(), tmp_path)
