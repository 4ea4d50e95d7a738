"""The oldest supported front ends, JupyterLab 4.2 and Notebook 7.2, with the extension as built.

The labextension declares the lowest versions its code needs (DESIGN §7): built against the
newest JupyterLab, it must still load in the oldest supported one. ``.ci/install`` makes a
second environment, ``.venv-jlab42`` (``jupyterlab==4.2.*``, ``notebook==7.2.*``, this package
with the extension it built); these tests start that JupyterLab, check that it calls the
extension compatible, and chat in a notebook as a user would, the record saved in the file, and
the panel open. Without that environment they skip, saying so (in CI they fail: CI makes it).
Set ``JUPYTER_LLMCHAT_OLD_LAB`` to another environment's directory to test that one.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.harness import (
    JupyterServer,
    NotebookPage,
    empty_notebook,
    in_ci,
    server_env,
    start_server,
)
from tests.fake_openai import FakeOpenAI, Reply

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
OLD_LAB = Path(os.environ.get("JUPYTER_LLMCHAT_OLD_LAB") or ROOT / ".venv-jlab42")
OLD_LINE = "4.2."


def _old_python() -> str:
    python = OLD_LAB / "bin" / "python"
    if not python.exists():
        reason = (f"no environment of the oldest supported JupyterLab at {OLD_LAB} "
                  "(bash .ci/install makes it)")
        if in_ci():
            pytest.fail(f"old-JupyterLab tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    return str(python)


@pytest.fixture(scope="module")
def old_home(_browser_requirements: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jupyter-old")


@pytest.fixture(scope="module")
def old_server(old_home: Path) -> Iterator[JupyterServer]:
    """``jupyter lab`` of the old environment, for this module, stopped (kernels too) at its end."""
    server = start_server(old_home, python=_old_python(), log_name="jupyter-server-old.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def old_notebook(page: Page, old_server: JupyterServer) -> Iterator[Callable[..., NotebookPage]]:
    opened: list[str] = []

    def _open(path: str, ui: str = "lab") -> NotebookPage:
        old_server.put_notebook(path, empty_notebook())
        opened.append(path)
        return NotebookPage(page, old_server, path, ui).goto()

    yield _open
    for path in opened:
        old_server.shutdown_kernel(path)


def test_the_old_jupyterlab_calls_the_extension_compatible(old_home: Path) -> None:
    python = _old_python()
    version = subprocess.run([python, "-c", "import jupyterlab; print(jupyterlab.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith(OLD_LINE), f"{OLD_LAB} has JupyterLab {version}, not {OLD_LINE}x"
    listed = subprocess.run([str(OLD_LAB / "bin" / "jupyter-labextension"), "list"], capture_output=True,
                            text=True, env=server_env(old_home), check=True)
    text = re.sub(r"\x1b\[[0-9;]*m", "", listed.stdout + listed.stderr)
    assert "not compatible" not in text, text
    assert re.search(r"jupyter-llmchat v\S+ enabled\s+OK", text), text


def chat_and_check_the_record(nb: NotebookPage, fake: FakeOpenAI) -> None:
    nb.run_cell("%load_ext jupyter_llmchat")
    nb.run_cell(f'%config ChatMagics.base_url = "{fake.base_url}"\n%config ChatMagics.model = "test-model"')
    fake.script(Reply(text="Paris is the capital of France."))
    index = nb.run_cell("%%chat\nWhat is the capital of France?")
    assert "Paris is the capital" in nb.output(index)
    assert "extension did not answer" not in nb.output(index)  # the kernel saw it active
    # The extension writes the record into the notebook model; a save puts it in the file.
    deadline = time.monotonic() + 30
    while not nb.metadata():
        assert time.monotonic() < deadline, "the extension wrote no record into the notebook model"
        time.sleep(0.1)
    nb.save()
    record = nb.server.contents(nb.path)["content"]["metadata"].get("jupyter_llmchat")
    assert record, "no chat record in the saved notebook"
    texts = [c.get("text") for t in record["sessions"]["default"]["turns"] for c in t["contents"]]
    assert texts == ["What is the capital of France?\n", "Paris is the capital of France."]


def test_old_jupyterlab_records_the_chat_and_opens_the_panel(
    old_notebook: Callable[..., NotebookPage], fake_server: FakeOpenAI
) -> None:
    nb = old_notebook("old-lab.ipynb")
    chat_and_check_the_record(nb, fake_server)
    index = nb.run_cell("%chat_panel")
    dock = nb.page.locator(".jp-llmchat-dock:visible")
    dock.wait_for()
    # The panel shows the history that the cell made.
    nb.page.wait_for_function(
        "() => document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message').length === 2"
    )


def test_old_notebook_7_records_the_chat(
    old_notebook: Callable[..., NotebookPage], fake_server: FakeOpenAI
) -> None:
    nb = old_notebook("old-nb7.ipynb", ui="notebook")
    chat_and_check_the_record(nb, fake_server)


def test_old_jupyterlab_says_stop_waits_for_the_running_cell(
    old_notebook: Callable[..., NotebookPage], fake_server: FakeOpenAI, tmp_path: Path
) -> None:
    """JupyterLab 4.2 has no kernel subshells: the panel's Stop reaches the kernel only when the
    running cell ends. The panel says so at once, and the Stop then ends the answer, partial."""
    from tests.browser.test_panel_browser import ask, blocking_cell, wait_idle, wait_text

    nb = old_notebook("old-stop.ipynb")
    page = nb.page
    nb.run_cell("%load_ext jupyter_llmchat")
    nb.run_cell(f'%config ChatMagics.base_url = "{fake_server.base_url}"\n'
                '%config ChatMagics.model = "test-model"')
    nb.run_cell("%chat_panel")
    page.locator(".jp-llmchat-dock:visible").wait_for()
    fake_server.script(Reply(text="word " * 800, chunk_chars=4, delay=0.1))  # ~100 s unless stopped
    ask(page, "Talk for a while")
    wait_text(page, "word")
    flag = tmp_path / "release"
    running = nb.start_cell(blocking_cell(flag))
    nb.wait_for_kernel_busy()
    page.locator(".jp-llmchat-dock:visible .jp-llmchat-stop").click()
    status = page.locator(".jp-llmchat-dock:visible .jp-llmchat-status")
    page.wait_for_function(
        "() => document.querySelector('.jp-llmchat-dock .jp-llmchat-status')?.innerText"
        ".includes('when the running cell ends')")
    assert "when the running cell ends" in status.inner_text()
    flag.touch()
    nb.wait_for_cell(running)
    wait_idle(page)
    page.locator(".jp-llmchat-dock:visible .jp-llmchat-partial").wait_for()
    assert "when the running cell ends" not in status.inner_text()
