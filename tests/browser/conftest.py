"""Fixtures of the browser tests: one JupyterLab server and one Chromium for the whole session.

Reuse them in every ``tests/browser/test_*.py`` (mark those tests ``@pytest.mark.browser``);
the classes behind them are in ``tests/browser/harness.py``.

- ``jupyter_server`` (session): ``jupyter lab`` from this interpreter's environment on a free
  port of 127.0.0.1, with a random token, in a temporary root directory, with its own settings,
  workspaces, config and IPython directories (no news, no update check, no autosave). A
  :class:`~tests.browser.harness.JupyterServer`: ``url``, ``token``, ``root_dir``,
  ``contents(path)``, ``put_notebook(path, nb)``, ``read_text(path)``, ``sessions(path)``,
  ``shutdown_kernel(path)``, ``api(method, path, body)``. Its log: tests/artifacts/.
- ``browser`` (package: closed after the last browser test, so that asyncio tests run after it):
  Playwright's Chromium on the system's ``/usr/bin/chromium``, headless.
- ``page`` (per test): a fresh browser context and page. ``console_messages(page)`` is what it
  logged; when the test fails, a screenshot goes to ``tests/artifacts/<test>-failed.png``.
- ``fake_server`` (per test): the session's ``FakeOpenAI`` (tests/fake_openai.py) in a thread of
  this process, with an empty script and request log; kernels reach it on 127.0.0.1.
- ``open_notebook`` (per test): ``open_notebook(path, ui="lab")`` opens a notebook of the
  server's root in the page (JupyterLab in a fresh workspace, or Notebook 7 with
  ``ui="notebook"``) and returns a :class:`~tests.browser.harness.NotebookPage`:
  ``run_cell(text)``, ``output(i)``, ``delete_cell(i)``, ``save()``, ``restart_kernel()``,
  ``close()``, ``reopen()``, ``metadata()``, ``command(id)``, ``screenshot(name)``.

Without ``/usr/bin/chromium`` or the ``playwright`` package every test here is skipped, except
in CI (``CI=true``), where that is a failure: CI installs both. Never run ``playwright install``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.harness import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    JupyterServer,
    NotebookPage,
    in_ci,
    missing_requirement,
    start_server,
    watch_console,
)
from tests.fake_openai import FakeOpenAI

if TYPE_CHECKING:  # playwright is imported only once it is known to be installed
    from playwright.sync_api import Browser, Page

_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session", autouse=True)
def _browser_requirements() -> None:
    """Skip this directory without Chromium or Playwright; fail instead in CI."""
    reason = missing_requirement()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"browser tests cannot run: {reason}; CI must install both", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


@pytest.fixture(scope="session")
def jupyter_server(
    _browser_requirements: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JupyterServer]:
    """``jupyter lab`` for the whole session, stopped (kernels included) at its end."""
    server = start_server(tmp_path_factory.mktemp("jupyter"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def browser(_browser_requirements: None) -> Iterator[Browser]:
    """The system's Chromium, headless, shared by every test of tests/browser/.

    Package scope, not session: while Playwright's sync API is open its event loop counts as
    running in this thread, and the asyncio tests that run after this package would fail.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh context and page; screenshot and console go to tests/artifacts/ on failure."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    log = watch_console(pg)
    try:
        yield pg
    finally:
        if request.node.stash.get(_FAILED, False):
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:120]
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                pg.screenshot(path=str(ARTIFACTS / f"{name}-failed.png"))
            except Exception as exc:  # the page may be what broke
                print(f"no failure screenshot: {exc}", file=sys.stderr)
            (ARTIFACTS / f"{name}-console.log").write_text("\n".join(log), encoding="utf-8")
        context.close()


@pytest.fixture
def fake_server(fake: FakeOpenAI) -> FakeOpenAI:
    """The session's fake OpenAI server (tests/conftest.py), with an empty script and log."""
    return fake


@pytest.fixture
def open_notebook(
    page: Page, jupyter_server: JupyterServer, request: pytest.FixtureRequest
) -> Iterator[Callable[..., NotebookPage]]:
    """``open_notebook(path, ui="lab" | "notebook")``: that notebook, open in this test's page.

    ``path`` is relative to the server's root and must exist (write it first with
    ``jupyter_server.put_notebook(path, empty_notebook())``). After a passing test the kernels
    of the notebooks it opened are shut down; after a failing one they are left as they are,
    for the failure screenshot.
    """
    opened: list[str] = []

    def _open(path: str, ui: str = "lab") -> NotebookPage:
        opened.append(path)
        return NotebookPage(page, jupyter_server, path, ui).goto()

    yield _open
    if not request.node.stash.get(_FAILED, False):
        for path in dict.fromkeys(opened):
            jupyter_server.shutdown_kernel(path)
