"""The ship check (eval.ship_check, trainer.engine.ship_check): on the tiny model the merged folder, the GGUF and the
served model answer like the in-process model and the report's Ship check table says so; an artifact planted with a
broken chat template and EOS is flagged in the verdict headline, named, with what to fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import compose, hydratune

pytestmark = pytest.mark.slow  # trains the tiny model, exports it, starts `hydratune serve`

TINY = [
    "model=tiny_random",
    "hardware.threads=1",
    "eval.max_examples=8",
    "eval.generation.max_new_tokens=8",
    "logger=jsonl",
    "train.max_steps=3",
]


@pytest.fixture(scope="module")
def checked_run(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("ship") / "run"
    result = hydratune(*TINY, "eval.ship_check=true", "export.gguf=f32", f"hydra.run.dir={run_dir}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_every_artifact_answers_like_the_in_process_model(checked_run):
    section = json.loads((checked_run / "metrics.json").read_text())["ship_check"]
    rows = section["rows"]
    assert list(rows) == ["in-process", "merged", "gguf", "served"]
    for name in ("in-process", "merged", "served"):
        row = rows[name]
        assert row["examples"] == 8 and 0 <= row["stop_rate"] <= 1 and row["answer_tokens"] > 0, (name, row)
        assert {"exact_match", "token_f1"} <= row["metrics"].keys()
    assert rows["merged"]["agreement"] == 1.0 and rows["merged"]["metrics"] == rows["in-process"]["metrics"]
    assert rows["served"]["agreement"] == 1.0, rows["served"]["disagreeing"]
    # the GGUF is measured, or its failure is named in the table and flagged (never silently missing)
    assert "agreement" in rows["gguf"] or any(p.startswith("gguf:") for p in section["problems"])
    assert section["seconds"] > 0
    report = (checked_run / "report.md").read_text()
    assert "## Ship check" in report and f"The check took {section['seconds']:.1f} s" in report
    assert "| merged | 100% |" in report and "| served |" in report
    html = (checked_run / "report.html").read_text()
    assert 'id="ship-check"' in html and "<td>merged</td>" in html
    if not section["problems"]:
        assert "Ship check FAILED" not in report


def test_a_merged_folder_with_a_broken_template_and_eos_is_flagged(checked_run, tmp_path, cache_dir):
    """Plant the failures users hit after export: the merged folder's chat template drops the end-of-turn token and
    opens the answer differently, its generation_config lost the EOS id. The check names merged (and served, which
    serves that folder) in the verdict."""
    from trainer.engine import ship_check
    from trainer.evaluation import local as evaluation
    from trainer.hosting import export
    from trainer.report import markdown

    run = tmp_path / "run"
    shutil.copytree(checked_run, run)
    merged = run / "export" / "merged"
    config = json.loads((merged / "tokenizer_config.json").read_text())
    broken = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    (merged / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": broken + "assistant: "}))
    (merged / "chat_template.jinja").unlink(missing_ok=True)
    generation = json.loads((merged / "generation_config.json").read_text())
    (merged / "generation_config.json").write_text(json.dumps(generation | {"eos_token_id": 0}))
    (merged / "config.json").touch()  # newer than the adapter: the check uses this folder as it is

    cfg = compose("model=tiny_random", "eval.generation.max_new_tokens=8", f"cache_dir={cache_dir}")
    model, tokenizer = export.load_merged(export.find(run), cfg.cache_dir)  # the reference: the run's own model
    queries = [evaluation.Query([{"role": "user", "content": f"Title: dish {i}"}], "x") for i in range(4)]
    section = ship_check.run(cfg, model, tokenizer, queries, run)
    assert section["rows"]["merged"]["agreement"] < 1.0
    named = " ".join(section["problems"])
    assert "merged answers differ from the in-process model's" in named and "chat template" in named
    headline = markdown.verdict({"ship_check": section})
    assert headline.startswith("**Ship check FAILED (merged")


def test_a_served_call_reads_back_as_the_text_the_model_generated():
    """The gate turns the model's <tool_call> text into tool_calls; the ship check turns them back before comparing."""
    from trainer.data import tool_calls
    from trainer.engine.ship_check import _served_text

    generated = tool_calls.answer_text(
        {"content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    )
    served = _served_text("", [{"name": "get_weather", "arguments": '{"city": "Oslo"}'}])
    assert served == generated and "get_weather" in served and "Oslo" in served
    assert _served_text("plain answer", []) == "plain answer"
