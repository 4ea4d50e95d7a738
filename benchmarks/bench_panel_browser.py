"""How long the chat panel takes to show its history, in Chromium: a new notebook against one
whose record holds a 2,000-turn conversation (DESIGN §8: <= 0.5 s).

A real ``jupyter lab`` and Chromium through the browser tests' harness (tests/browser/harness.py;
the labextension is the one ``JUPYTER_PATH`` finds, so a build can be timed against another).
For each repetition, a fresh notebook (and kernel): ``%load_ext``, then ``%chat_panel`` typed and
run with Shift+Enter; timed from the key press until the dock shows its history: every message
it shows rendered (its Markdown) and the last answer among them; for the new notebook, until
the dock's input shows. The 2,000-turn record is 1,000 panel exchanges with short Markdown
answers (bold, a code block), as tests/browser/test_panel_history_browser.py builds it. The
median of the repetitions is printed with the range and the messages rendered. Never asserts.

Run from the repository (2 cores shared: run it alone):
  JUPYTER_PATH=/tmp/jp-NAME .venv/bin/python benchmarks/bench_panel_browser.py [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.harness import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    NotebookPage,
    empty_notebook,
    start_server,
)
from tests.browser.test_panel_history_browser import long_notebook  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402

#: True once the dock shows its history: every message shown rendered, the last one ``marker``.
SHOWN = """(marker) => {
  const dock = [...document.querySelectorAll('.jp-llmchat-dock')].find(d => d.offsetParent);
  if (!dock || !dock.querySelector('textarea')) { return false; }
  if (marker === '') { return true; }
  const all = dock.querySelectorAll('.jp-chat-message');
  const done = [...dock.querySelectorAll('.jp-chat-rendered-message')]
    .filter(m => m.innerText.trim() !== '');
  return all.length > 0 && done.length === all.length
    && done[done.length - 1].innerText.includes(marker);
}"""


def time_panel(page: Any, server: Any, path: str, nb_json: dict[str, Any], marker: str,
               base_url: str) -> tuple[float, int]:
    """Seconds from running ``%chat_panel`` until its history shows; messages rendered."""
    server.put_notebook(path, nb_json)
    nb = NotebookPage(page, server, path, "lab").goto()
    nb.run_cell("%load_ext jupyter_llmchat")
    nb.run_cell(f'%config ChatMagics.base_url = "{base_url}"\n'
                '%config ChatMagics.model = "test-model"')
    index = nb.start_cell("%chat_panel")  # typed, then Shift+Enter: the clock starts here
    start = time.perf_counter()
    page.wait_for_function(SHOWN, arg=marker, timeout=120_000, polling="raf")
    elapsed = time.perf_counter() - start
    nb.wait_for_cell(index)
    count = int(page.evaluate(
        "() => [...document.querySelectorAll('.jp-llmchat-dock')].find(d => d.offsetParent)"
        ".querySelectorAll('.jp-chat-message').length"))
    server.shutdown_kernel(path)
    page.goto("about:blank")
    return elapsed, count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--exchanges", type=int, default=1000, help="exchanges (2 turns each)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    cases = [("new notebook", lambda: empty_notebook(), ""),
             (f"{2 * args.exchanges:,}-turn record", lambda: long_notebook(args.exchanges),
              f"Answer {args.exchanges}:")]
    results: dict[str, list[tuple[float, int]]] = {name: [] for name, _, _ in cases}
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as fake, sync_playwright() as pw:
        server = start_server(Path(tmp), log_name="bench-panel-server.log")
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            # One warm-up (JupyterLab's and the kernel's first start), then the cases interleaved.
            time_panel(page, server, "warm.ipynb", empty_notebook(), "", fake.base_url)
            for rep in range(args.reps):
                for k, (name, make, marker) in enumerate(cases):
                    path = f"bench-{rep}-{k}.ipynb"
                    timed = time_panel(page, server, path, make(), marker, fake.base_url)
                    results[name].append(timed)
        finally:
            browser.close()
            server.stop()
    print("| notebook | panel shows its history (median) | range | messages rendered |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        times = [t for t, _ in rows]
        print(f"| {name} | {statistics.median(times):.2f} s | {min(times):.2f}-{max(times):.2f} s "
              f"| {rows[-1][1]:,} |")


if __name__ == "__main__":
    main()
