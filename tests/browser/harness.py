"""The browser tests' harness: a JupyterLab server, and a notebook in a page driven like a user.

Used through the fixtures of tests/browser/conftest.py; import the classes from here for type
annotations (``from tests.browser.harness import NotebookPage``). Nothing here imports Playwright
at import time: conftest.py skips (or, in CI, fails) when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

__all__ = [
    "ARTIFACTS",
    "JupyterServer",
    "NotebookPage",
    "console_messages",
    "empty_notebook",
    "missing_requirement",
    "server_env",
    "start_server",
    "watch_console",
]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
#: Playwright's default timeout for one action or wait, in milliseconds.
TIMEOUT_MS = 30_000
SERVER_START_TIMEOUT = 60.0

#: User settings of the test server: nothing that pops up, saves or hides cells on its own.
USER_SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    # Every cell stays in the DOM, so cells are found by index whatever the scroll position.
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_requirement() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


# -- the Jupyter server ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def empty_notebook(*, cells: int = 1) -> dict[str, Any]:
    """A new notebook on the ``python3`` kernel with ``cells`` empty code cells."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            {"cell_type": "code", "id": uuid.uuid4().hex[:8], "metadata": {}, "source": "",
             "outputs": [], "execution_count": None}
            for _ in range(cells)
        ],
    }


@dataclass
class JupyterServer:
    """A running ``jupyter lab``, with a few REST helpers (all authenticated by the token)."""

    url: str
    token: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """``METHOD /api/<path>`` with a JSON body; the parsed JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}api/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def contents(self, path: str) -> dict[str, Any]:
        """``GET /api/contents/<path>?content=1``: the model, with the notebook as ``content``."""
        return self.api("GET", f"contents/{urllib.parse.quote(path)}?content=1")  # type: ignore[no-any-return]

    def put_notebook(self, path: str, nb: dict[str, Any]) -> dict[str, Any]:
        """Write a notebook (its JSON) through the contents API; returns the saved model."""
        body = {"type": "notebook", "format": "json", "content": nb}
        return self.api("PUT", f"contents/{urllib.parse.quote(path)}", body)  # type: ignore[no-any-return]

    def read_text(self, path: str) -> str:
        """The file exactly as it is on disk."""
        return (self.root_dir / path).read_text(encoding="utf-8")

    def sessions(self, path: str | None = None) -> list[dict[str, Any]]:
        """The server's sessions (notebook <-> kernel), or only those of ``path``."""
        found = self.api("GET", "sessions")
        return [s for s in found if path is None or s.get("path") == path]

    def shutdown_kernel(self, path: str) -> None:
        """Shut down the session (and kernel) of a notebook, as the Running panel does."""
        for s in self.sessions(path):
            self.api("DELETE", f"sessions/{s['id']}")

    def lab_url(self, path: str, workspace: str | None = None) -> str:
        """JupyterLab on ``path`` in a fresh (``?reset``) workspace, so no earlier layout leaks in."""
        ws = workspace or f"t{uuid.uuid4().hex[:10]}"
        return f"{self.url}lab/workspaces/{ws}/tree/{urllib.parse.quote(path)}?reset&token={self.token}"

    def notebook_url(self, path: str) -> str:
        """Notebook 7 on ``path``."""
        return f"{self.url}notebooks/{urllib.parse.quote(path)}?token={self.token}"

    def stop(self) -> None:
        """Stop the server (jupyter_server shuts its kernels down on SIGTERM)."""
        _stop_process(self.process)


def _write_user_settings(settings_dir: Path) -> None:
    for plugin, values in USER_SETTINGS.items():
        target = settings_dir / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values), encoding="utf-8")


def server_env(home: Path) -> dict[str, str]:
    """The environment of a test server whose dirs are under ``home`` (also for its CLI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "JPY_"))}
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        IPYTHONDIR=str(home / "ipython"),
        # Kernels talk to the fake server on loopback: never through a proxy from the environment.
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    return env


def start_server(home: Path, python: str | None = None, log_name: str = "jupyter-server.log") -> JupyterServer:
    """Start ``jupyter lab`` with its root, settings, config and IPython dirs under ``home``.

    ``python``: the interpreter of another environment (an older JupyterLab), default this one.
    Returns once ``/api/status`` answers; its output goes to tests/artifacts/``log_name``.
    """
    root = home / "root"
    root.mkdir(parents=True, exist_ok=True)
    # The config dir holds lab/user-settings and lab/workspaces for both JupyterLab and Notebook 7.
    _write_user_settings(home / "config" / "lab" / "user-settings")
    token = secrets.token_hex(16)
    port = _free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / log_name
    cmd = [
        python or sys.executable, "-m", "jupyterlab",
        "--allow-root", "--no-browser",
        f"--IdentityProvider.token={token}",
        "--ServerApp.ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
        # window.jupyterapp: tests run the app's own commands (restart, open) as its menus do.
        "--LabApp.expose_app_in_browser=True",
        "--JupyterNotebookApp.expose_app_in_browser=True",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, cwd=root, env=server_env(home), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = JupyterServer(f"http://127.0.0.1:{port}/", token, root, log_path, process)
    try:
        _wait_for_status(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_for_status(server: JupyterServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"jupyter lab exited with code {server.process.returncode}; see {server.log_path}"
            )
        try:
            server.api("GET", "status", timeout=2)
            return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer /api/status; see {server.log_path}") from None
            time.sleep(0.2)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # jupyter_server shuts its kernels down on SIGTERM
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- the page's console ---------------------------------------------------------------------------

_CONSOLE: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def watch_console(page: Page) -> list[str]:
    """Start keeping what ``page`` logs; returns the (growing) list."""
    log: list[str] = []
    _CONSOLE[page] = log
    page.on("console", lambda msg: log.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: log.append(f"pageerror: {exc}"))
    return log


def console_messages(page: Page) -> list[str]:
    """What the page logged so far (``"<type>: <text>"``), uncaught page errors included."""
    return _CONSOLE.get(page, [])


# -- a notebook in the page ------------------------------------------------------------------------

# JavaScript run in the page: finds the notebook panel of `path` among the main area's widgets.
_FIND_PANEL = """
const app = window.jupyterapp;
if (!app || !app.shell) { return null; }
let panel = null;
for (const w of app.shell.widgets('main')) {
  if (w.context && w.context.path === path && w.content && w.sessionContext) { panel = w; }
}
"""

_PROMPT_DONE = re.compile(r"^\[\d+\]:?$")


class NotebookPage:
    """One notebook in a page, driven through the keyboard and the app's own commands.

    Cells are addressed by index (0 = first); ``run_cell`` types into the empty last cell and
    runs it with Shift+Enter, as a user does, and returns that cell's index.
    """

    def __init__(self, page: Page, server: JupyterServer, path: str, ui: str) -> None:
        if ui not in ("lab", "notebook"):
            raise ValueError(f"ui must be 'lab' or 'notebook', not {ui!r}")
        self.page = page
        self.server = server
        self.path = path
        self.ui = ui

    # -- opening -----------------------------------------------------------------------------

    def goto(self) -> NotebookPage:
        lab = self.ui == "lab"
        self.page.goto(self.server.lab_url(self.path) if lab else self.server.notebook_url(self.path))
        self.wait_until_open()
        return self

    def wait_until_open(self) -> None:
        """Until the notebook is loaded, shown, and its kernel idle."""
        self._wait_js("panel !== null && panel.context.isReady && panel.isVisible")
        self.wait_for_kernel_idle()
        self.cells.first.wait_for(state="visible")

    def wait_for_kernel_idle(self, timeout_ms: int = TIMEOUT_MS) -> None:
        self._wait_js(
            "panel !== null && panel.sessionContext.isReady && "
            "panel.sessionContext.session?.kernel?.status === 'idle'",
            timeout_ms=timeout_ms,
        )

    # -- page helpers ------------------------------------------------------------------------

    def js(self, body: str) -> Any:
        """Run ``body`` (a function body; ``app``, ``path`` and ``panel`` are defined) in the page."""
        return self.page.evaluate(f"async (path) => {{ {_FIND_PANEL} {body} }}", self.path)

    def _wait_js(self, condition: str, timeout_ms: int = TIMEOUT_MS) -> None:
        self.page.wait_for_function(
            f"(path) => {{ {_FIND_PANEL} return Boolean({condition}); }}",
            arg=self.path,
            timeout=timeout_ms,
        )

    def command(
        self, command_id: str, args: dict[str, Any] | None = None, *, wait: bool = True
    ) -> Any:
        """Execute one of the app's commands (what its menus and shortcuts do).

        Returns the command's result when it is plain JSON (None otherwise: a widget, say).
        ``wait=False`` returns at once, for commands that open a dialog and finish only once it
        is answered.
        """
        if not wait:
            self.page.evaluate(
                "([id, args]) => { void window.jupyterapp.commands.execute(id, args); }",
                [command_id, args or {}],
            )
            return None
        return self.page.evaluate(
            """async ([id, args]) => {
              const result = await window.jupyterapp.commands.execute(id, args);
              try { return JSON.parse(JSON.stringify(result ?? null)); } catch { return null; }
            }""",
            [command_id, args or {}],
        )

    @property
    def _panel_selector(self) -> str:
        panel_id = self.js("return panel ? panel.id : null;")
        if not panel_id:
            raise AssertionError(f"{self.path} is not open")
        return f'[id="{panel_id}"]'

    @property
    def cells(self) -> Locator:
        return self.page.locator(f"{self._panel_selector} .jp-Notebook .jp-Cell")

    def cell(self, index: int) -> Locator:
        return self.cells.nth(index)

    def metadata(self) -> Any:
        """``metadata.jupyter_llmchat`` of the notebook model in the page (saved or not)."""
        return self.js("return panel.model.getMetadata('jupyter_llmchat') ?? null;")

    def is_dirty(self) -> bool:
        return bool(self.js("return panel.model.dirty;"))

    # -- cells -------------------------------------------------------------------------------

    def _edit_empty_last_cell(self) -> None:
        count = self.cells.count()
        reusable = self.js(
            "const last = panel.content.widgets[panel.content.widgets.length - 1].model;"
            "return last.type === 'code' && last.sharedModel.getSource() === '';"
        )
        self.cell(count - 1).locator(".jp-InputArea-editor").click()
        if not reusable:
            self.page.keyboard.press("Escape")
            self.page.keyboard.press("b")  # insert a code cell below, in command mode
            self.cells.nth(count).wait_for(state="visible")
            self.page.keyboard.press("Enter")  # edit mode
        active = f"{self._panel_selector} .jp-Cell.jp-mod-active .cm-content"
        self.page.locator(active).wait_for(state="visible")

    def run_cell(self, text: str, timeout_ms: int = TIMEOUT_MS) -> int:
        """Type ``text`` into a new cell at the end, run it (Shift+Enter), wait until it is done."""
        index = self.start_cell(text)
        self.wait_for_cell(index, timeout_ms)
        return index

    def start_cell(self, text: str) -> int:
        """Type ``text`` into a new cell at the end and run it (Shift+Enter), without waiting."""
        self._edit_empty_last_cell()
        index = self.cells.count() - 1
        self.page.keyboard.insert_text(text)
        self.page.keyboard.press("Shift+Enter")
        return index

    def wait_for_cell(self, index: int, timeout_ms: int = TIMEOUT_MS) -> None:
        """Until cell ``index`` has finished running (its prompt shows a number)."""
        prompt = self.cell(index).locator(".jp-InputPrompt")
        deadline = time.monotonic() + timeout_ms / 1000
        while not _PROMPT_DONE.match(prompt.inner_text().strip()):
            if time.monotonic() > deadline:
                raise AssertionError(f"cell {index} did not finish: {self.cell(index).inner_text()[:60]!r}")
            time.sleep(0.05)

    def wait_for_kernel_busy(self, timeout_ms: int = TIMEOUT_MS) -> None:
        """Until the page knows the kernel is busy (running a cell)."""
        self._wait_js("panel !== null && panel.sessionContext.session?.kernel?.status === 'busy'",
                      timeout_ms=timeout_ms)

    def output(self, index: int) -> str:
        """The visible text of a cell's outputs."""
        return "\n".join(self.cell(index).locator(".jp-OutputArea-output").all_inner_texts())

    def delete_cell(self, index: int) -> None:
        """Select a cell and delete it with D, D in command mode."""
        before = self.cells.count()
        self.cell(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("d")
        self.page.keyboard.press("d")
        self._wait_js(f"panel.content.widgets.length === {before - 1}")

    # -- the document and its kernel ---------------------------------------------------------

    def save(self) -> None:
        """Ctrl+S, then wait until the file is written and the notebook clean."""
        before = self.js("return panel.context.contentsModel?.last_modified ?? null;")
        self.cell(0).locator(".jp-InputPrompt").click()  # focus the notebook, command mode
        self.page.keyboard.press("Control+s")
        self._wait_js(
            f"!panel.model.dirty && panel.context.contentsModel?.last_modified !== {json.dumps(before)}"
        )

    def restart_kernel(self) -> None:
        """Restart the kernel through the app's command and its confirmation dialog."""
        self.js(
            """
            const kernel = panel.sessionContext.session.kernel;
            let restarting = false;
            window.__llmchatRestarted = false;
            const onStatus = (_, status) => {
              if (status === 'restarting' || status === 'autorestarting') { restarting = true; }
              if (restarting && status === 'idle') {
                kernel.statusChanged.disconnect(onStatus);
                window.__llmchatRestarted = true;
              }
            };
            kernel.statusChanged.connect(onStatus);
            """
        )
        # Acts on the current notebook, as the Kernel menu does; then the dialog's Restart button.
        self.command("notebook:restart-kernel", wait=False)
        self.page.locator(".jp-Dialog .jp-mod-accept").click()
        self.page.wait_for_function("() => window.__llmchatRestarted === true")
        self.wait_for_kernel_idle()

    def close(self) -> None:
        """Close the notebook's tab (JupyterLab) with its close icon; its kernel keeps running.

        Save first: a notebook with unsaved changes would ask, and this does not answer.
        """
        if self.ui != "lab":
            raise NotImplementedError("close() closes a JupyterLab tab")
        if self.is_dirty():
            raise AssertionError(f"{self.path} has unsaved changes: save() before close()")
        name = Path(self.path).name
        tab = self.page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=name)
        tab.locator(".lm-TabBar-tabCloseIcon").click()
        self._wait_js("panel === null")

    def reopen(self) -> None:
        """Open the notebook again in the same page (what a double click in the file browser does)."""
        self.command("docmanager:open", {"path": self.path})
        self.wait_until_open()

    def activate(self) -> None:
        """Bring this notebook's tab to the front (it must be open in the page)."""
        self.command("docmanager:open", {"path": self.path})
        self._wait_js("panel !== null && panel.isVisible")

    def use_kernel_of(self, other: str) -> str:
        """Switch this notebook to the running kernel of notebook ``other`` (what the kernel
        selector's "Use Kernel from Other Session" does, through the session API); its id."""
        (session,) = self.server.sessions(other)
        kernel_id = json.dumps(session["kernel"]["id"])
        self.js(f"await panel.sessionContext.changeKernel({{id: {kernel_id}}});")
        self._wait_js(f"panel.sessionContext.session?.kernel?.id === {kernel_id}")
        self.wait_for_kernel_idle()
        return str(session["kernel"]["id"])

    def screenshot(self, name: str) -> Path:
        """A screenshot of the page, as tests/artifacts/<name>."""
        ARTIFACTS.mkdir(exist_ok=True)
        target = ARTIFACTS / name
        self.page.screenshot(path=str(target))
        return target


