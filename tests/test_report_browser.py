"""report.html in a real headless browser: Debian's Chromium driven by Playwright (tests/browser.py; .ci/browser
installs it in CI).

The page loads without console errors or network requests, the verdict and the tables are visible, clicking a
heading sorts, the search box filters, and a screenshot is saved. Locally the test skips, saying why, when
Chromium or Playwright is missing; under CI (CI=true) a missing browser is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.browser import launch, missing, open_page
from tests.test_report import metrics
from trainer.report import files as report_files
from trainer.report import sweeps


@pytest.fixture(scope="module")
def browser():
    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


def column(page, table: str, index: int) -> list[str]:
    return page.eval_on_selector_all(
        f"#{table} tbody tr", f"rows => rows.filter(r => !r.hidden).map(r => r.cells[{index}].textContent.trim())"
    )


def test_run_report_in_a_browser(browser, tmp_path):
    # base right on 0-4, tuned right on 2-24 (the clear-gain case of test_report.py)
    gain = metrics(list(range(5)), list(range(2, 25)))
    long_prompt = "system: " + "a shared system prompt. " * 40 + "user: recipe twenty-seven"
    for key in ("base", "finetuned"):
        gain[key]["per_example"]["prompt"][27] = long_prompt
    report_files.write_report(tmp_path, gain, [{"step": 1, "loss": 2.0}], "gain")
    page = open_page(browser, tmp_path / "report.html")
    assert page.problems == []
    verdict = page.locator("#verdict")
    assert verdict.is_visible() and "beat the base model on exact_match" in verdict.inner_text()
    assert "95% CI" in verdict.inner_text()
    assert page.locator("#comparisons").is_visible() and page.locator("#examples").is_visible()
    assert page.locator("#loss-curve").evaluate("img => img.complete && img.naturalWidth > 0")

    # sort the examples by the fine-tuned answer's exact match (column 7: #, prompt, reference, base answer,
    # base exact_match, base token_f1, fine-tuned answer, tuned exact_match, ...): ascending puts the misses first
    header = page.locator("#examples thead th", has_text="tuned exact_match")
    header.click()
    ascending = column(page, "examples", 7)
    assert ascending == sorted(ascending, key=float) and ascending[0] == "0.000" and ascending[-1] == "1.000"
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert column(page, "examples", 7) == sorted(ascending, key=float, reverse=True)
    # numeric, not text, order on the index column
    page.locator("#examples thead th", has_text="#").first.click()
    assert column(page, "examples", 0) == [str(i) for i in range(30)]

    page.fill("input[data-filter=examples]", "tuned said 27")
    assert column(page, "examples", 0) == ["27"] and page.inner_text("#examples-count") == "1"
    # a long prompt shows its end, one clipped line, until expanded; the whole text on hover and when open
    cell = page.locator("#examples tbody tr:not([hidden]) td").nth(1)
    summary = cell.locator("summary")
    assert summary.inner_text().strip() == "\u2026" + long_prompt[-160:]
    assert summary.get_attribute("title") == long_prompt
    clipped = cell.bounding_box()["height"]
    summary.click()
    assert cell.inner_text().strip().endswith(long_prompt) and cell.bounding_box()["height"] > 2 * clipped
    page.fill("input[data-filter=examples]", "a shared system prompt")  # search reads the whole prompt
    assert column(page, "examples", 0) == ["27"]

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("HYDRATUNE_SCREENSHOTS")  # CI can keep it as an artifact
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
    assert page.problems == []


def test_sweep_report_sorts_its_runs(browser, tmp_path):
    for i, lr in enumerate(("1e-4", "3e-4", "1e-3")):
        run = tmp_path / str(i)
        run.mkdir()
        (run / "overrides.json").write_text(f'["train.learning_rate={lr}"]')
        (run / "status.json").write_text('{"status": "ok"}')
        (run / "metrics.json").write_text(f'{{"finetuned": {{"eval_loss": {[2.5, 1.5, 2.0][i]}}}}}')
    sweeps.write_summary(tmp_path, "finetuned.eval_loss", "minimize")
    page = open_page(browser, tmp_path / "report.html")
    assert page.problems == []
    assert "best: run 1" in page.inner_text("#verdict")
    assert column(page, "runs", 1) == ["3e-4", "1e-3", "1e-4"]  # best first
    page.locator("#runs thead th", has_text="train.learning_rate").click()
    assert column(page, "runs", 1) == ["1e-4", "3e-4", "1e-3"]  # numeric order of the swept value
    assert page.locator("#objective-plot").evaluate("img => img.complete && img.naturalWidth > 0")
