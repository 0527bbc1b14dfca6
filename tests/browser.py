"""Headless Chromium for report.html: Debian's chromium (``.ci/browser`` installs it) driven by Playwright (the dev
extra), never a browser that Playwright downloads. The browser test (tests/test_report_browser.py) uses it, and so
does the committed screenshot of the quickstart run's report:

    python -m tests.browser outputs/quickstart-lora/DATE/report.html examples/quickstart/report.png [HEIGHT]
"""

from __future__ import annotations

import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing (`bash .ci/browser` installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[dev]')"
    return None


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def open_page(browser, path: Path):
    """The page at ``path``, with every console error, page error and non-file request recorded."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.problems = []
    page.on("console", lambda m: m.type in ("error", "warning") and page.problems.append(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("request", lambda r: r.url.startswith("file:") or page.problems.append(f"network request: {r.url}"))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page


def screenshot(html: Path, out: Path, height: int | None = None) -> list[str]:
    """A screenshot of ``html`` into ``out`` (the whole page, or its top ``height`` pixels); the page's problems
    (console errors, network requests)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = open_page(browser, html)
            clip = {"x": 0, "y": 0, "width": 1280, "height": height} if height else None
            page.screenshot(path=str(out), full_page=True, clip=clip)
            return page.problems
        finally:
            browser.close()


if __name__ == "__main__":
    reason = missing()
    if reason:
        sys.exit(reason)
    problems = screenshot(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    print("\n".join(problems) or f"{sys.argv[2]}: no console errors, no network requests")
    sys.exit(1 if problems else 0)
