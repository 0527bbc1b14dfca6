"""The report from per-example scores: paired comparisons with intervals, flips and worst regressions, report.html
(self-contained), and `hydratune report` rebuilding one run, a sweep, or several runs side by side."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import hydratune
from trainer.report import files as report_files

N = 30


def section(correct: list[int], answer: str = "right") -> dict:
    em = [float(i in correct) for i in range(N)]
    return {
        "exact_match": sum(em) / N,
        "examples": N,
        "per_example": {
            "prompt": [f"question {i} <script>alert(1)</script>" for i in range(N)],
            "reference": [f"answer {i}" for i in range(N)],
            "prediction": [f"answer {i}" if e else f"{answer} {i}" for i, e in enumerate(em)],
            "prompt_tokens": [20] * N,
            "answer_tokens": [4] * N,
            "scores": {"exact_match": em, "token_f1": [0.5 + e / 2 for e in em]},
        },
    }


def metrics(base: list[int], tuned: list[int]) -> dict:
    return {"base": section(base, "base said"), "finetuned": section(tuned, "tuned said"), "data": {"rows": N}}


@pytest.fixture
def clear_gain(tmp_path) -> Path:
    # base right on 0-4; tuned right on 2-24: 20 wrong -> right, 2 right -> wrong (examples 0 and 1).
    report_files.write_report(tmp_path, metrics(list(range(5)), list(range(2, 25))), [{"step": 1, "loss": 2.0}], "gain")
    return tmp_path


def test_report_shows_difference_interval_p_value_and_flips(clear_gain):
    md = (clear_gain / "report.md").read_text()
    assert md.startswith("# gain\n\n**The fine-tuned model beat the base model on exact_match**")
    row = next(line for line in md.splitlines() if line.startswith("| fine-tuned | base model | exact_match"))
    assert "+0.6000" in row and "McNemar exact" in row and row.endswith("| better |")
    assert "wrong -> right: **20**; right -> wrong: **2**" in md
    # the worst regressions: prompt, base answer, tuned answer, reference
    assert "- base model (1.00): `answer 0`" in md and "- fine-tuned (0.00): `tuned said 0`" in md
    saved = json.loads((clear_gain / "metrics.json").read_text())
    assert "per_example" not in saved["base"]
    (c,) = [c for c in saved["comparisons"] if c["metric"] == "exact_match"]
    assert c["ci_low"] > 0 and c["verdict"] == "better"
    lines = (clear_gain / "examples.jsonl").read_text().splitlines()
    assert len(lines) == N and json.loads(lines[0])["answers"]["finetuned"]["prediction"] == "tuned said 0"


def test_identical_models_report_no_significant_difference(tmp_path):
    report_files.write_report(tmp_path, metrics([1, 2, 3], [1, 2, 3]), [], "same")
    md = (tmp_path / "report.md").read_text()
    assert "did NOT beat the base model on exact_match" in md
    assert "no significant difference at this sample size** (n = 30)" in md
    assert "wrong -> right: **0**; right -> wrong: **0**" in md


def test_report_html_is_self_contained_and_escapes_text(clear_gain):
    html = (clear_gain / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must fetch nothing"
    assert "<link" not in html and 'src="data:image/png;base64,' in html  # the loss curve, embedded
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'id="examples" class="sortable"' in html and html.count('<tr><td class="num">') >= N


def test_rebuild_writes_the_same_report(clear_gain):
    before = {n: (clear_gain / n).read_text() for n in ("report.md", "report.html")}
    (clear_gain / "report.md").unlink()
    result = hydratune("report", str(clear_gain), cache=clear_gain / "cache")
    assert result.returncode == 0, result.stderr
    assert {n: (clear_gain / n).read_text() for n in before} == before


def test_report_command_compares_several_runs_side_by_side(tmp_path):
    for name, tuned in (("a", list(range(20))), ("b", list(range(3)))):
        (tmp_path / name).mkdir()
        report_files.write_report(tmp_path / name, metrics([0, 1, 2], tuned), [], f"run {name}")
    out = tmp_path / "both.html"
    result = hydratune("report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), cache=tmp_path / "c")
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert "run a" in html and "run b" in html and "finetuned.exact_match" in html
    assert "0.6667" in html and "0.1000" in html


def test_report_command_explains_a_folder_that_is_no_run(tmp_path):
    result = hydratune("report", str(tmp_path), cache=tmp_path / "c")
    assert result.returncode == 2
    assert "is neither a run dir (no metrics.json" in result.stderr and "Traceback" not in result.stderr


def test_compared_models_are_paired_with_the_fine_tuned_model(tmp_path):
    m = metrics([0, 1], list(range(25)))
    m["compare"] = {"gpt-x": section(list(range(24)), "gpt said")}
    report_files.write_report(tmp_path, m, [], "with a compared model")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    pairs = {(c["reference"], c["candidate"], c["metric"]): c for c in saved["comparisons"]}
    assert pairs["compare.gpt-x", "finetuned", "exact_match"]["verdict"] == "no significant difference"
    assert pairs["base", "compare.gpt-x", "exact_match"]["verdict"] == "better"
    assert "per_example" not in saved["compare"]["gpt-x"]
    assert "| fine-tuned | gpt-x | exact_match | +0.0333 |" in (tmp_path / "report.md").read_text()


def test_report_command_rebuilds_a_sweep_with_its_recorded_objective(tmp_path):
    from trainer.report import command as report_command

    for i, (lr, em) in enumerate((("1e-4", 0.2), ("1e-3", 0.6))):
        run = tmp_path / str(i)
        run.mkdir()
        (run / "overrides.json").write_text(f'["train.learning_rate={lr}"]')
        (run / "status.json").write_text('{"status": "ok"}')
        (run / "config.yaml").write_text("objective:\n  metric: finetuned.exact_match\n  direction: maximize\n")
        (run / "metrics.json").write_text(json.dumps({"finetuned": {"exact_match": em, "eval_loss": 1.0}}))
    page = report_command.rebuild(tmp_path)
    assert page == tmp_path / "report.html" and "finetuned.exact_match (maximize)" in page.read_text()
    assert "**Best: run 1** (finetuned.exact_match = 0.6)" in (tmp_path / "summary.md").read_text()
