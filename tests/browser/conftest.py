"""A real headless Chromium (Debian's package) driven by Playwright, against a live server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "artifacts" / "screenshots"

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
# still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is needed (make test installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


# Every page of every browser test reports Content-Security-Policy violations to the
# console, where page_for collects them: a test that leaves one behind fails.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`
                + ` at ${e.sourceFile}:${e.lineNumber}`);
});
"""


def is_csp_message(text: str) -> bool:
    return "CSP violation" in text or "Content Security Policy" in text


@pytest.fixture
def csp_violations():
    """Console messages about CSP violations, from every page page_for opened."""
    seen: list[str] = []
    yield seen
    assert seen == [], "pages violated the Content-Security-Policy:\n" + "\n".join(seen)


@pytest.fixture
def page_for(browser, live_server, role_users, csp_violations):
    """page_for("operator") -> a browser page logged in as that role."""
    contexts = []

    def open_page(role: str):
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.add_init_script(REPORT_CSP_VIOLATIONS)
        contexts.append(context)
        page = context.new_page()
        page.on(
            "console",
            lambda m: csp_violations.append(m.text) if is_csp_message(m.text) else None,
        )
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/login/")
        page.fill("#id_username", role_users[role].username)
        page.fill("#id_password", "pw")
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/")
        return page

    yield open_page
    for context in contexts:
        context.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under artifacts/screenshots/ (kept by CI)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
