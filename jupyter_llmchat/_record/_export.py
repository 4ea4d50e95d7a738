"""A notebook's conversation as Markdown or self-contained HTML (``%chat_export``,
``jupyter-llmchat export``).

Notebook-record layer (no IPython): it works from the record of
``notebook.metadata["jupyter_llmchat"]``, checked by ``validate_record`` like any record read
back, and from the notebook's order of cells (the ids of its ``cells``), so the kernel's
in-memory record and a saved ``.ipynb`` export alike.

- Order (DESIGN §10): per session, exchanges keyed by a cell id follow the notebook's cell list
  (several of one cell keep their order); a panel question sits after its ``after_cell``; an
  exchange without a cell id keeps its place in the record, after the exchange it followed.
  An exchange whose cell is no longer in the notebook is left out (its spend still counted in
  the notebook's table), and the export says how many were.
- Everything in the record is untrusted (§9). The HTML export is inert: the Markdown is
  rendered by markdown-it-py with raw HTML off (tags in the text show as text), an image is a
  link (its text and its URL shown), only http(s), mailto and relative links are kept (a
  ``javascript:`` link stays plain text), every other string is escaped, and the page has no
  script, no remote stylesheet or font, and a Content Security Policy that forbids loading
  anything. The Markdown export passes every text from the record through ``safe_markdown``
  (the rule the cells use), so the ``.md`` is inert too where it is rendered with raw HTML on
  (GitHub, JupyterLab, VS Code): tags show as text, images are links, ``javascript:`` links
  are dropped; the only tags in it are the export's own ``<details>`` around thinking.
"""

from __future__ import annotations

import html
import pathlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._core._markdown import safe_markdown
from .._core._spend import exchange_footer
from .._core._turns import (
    NEW_LINE,
    ContentImage,
    Turn,
    call_line,
    exchanges,
    starts_conversation,
    tool_round,
)
from .._core._usage import UsageRow, format_row_cost, format_tokens
from .._errors import ConfigurationError, RecordError
from ._metadata import KEY, validate_record

__all__ = [
    "FORMATS",
    "export_record",
    "notebook_record",
    "to_html",
    "to_markdown",
]

#: The formats, by the output file's extension.
FORMATS = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}
#: Characters of a tool call's arguments, and of its error, on its one line.


# -- the conversation, in the notebook's order ---------------------------------------------------


@dataclass
class _Exchange:
    turns: list[Turn]
    cell_id: str | None
    source: str
    after_cell: str | None


@dataclass
class _Session:
    name: str
    provider: str
    model: str | None
    system_prompt: str | None
    exchanges: list[_Exchange]
    left_out: int = 0
    rows: list[UsageRow] = field(default_factory=list)


def _after_cells(raw: Any) -> list[str | None]:
    """The raw turns' ``after_cell`` (the reader of the record does not keep it), by index."""
    out: list[str | None] = []
    for t in raw.get("turns", []) if isinstance(raw, dict) else []:
        v = t.get("after_cell") if isinstance(t, dict) else None
        out.append(v if isinstance(v, str) and len(v) <= 200 else None)
    return out


def _ordered(items: list[_Exchange], order: Sequence[str] | None) -> tuple[list[_Exchange], int]:
    """``items`` (record order) in the notebook's order, and how many were left out."""
    if not order:
        return items, 0
    pos = {cid: i for i, cid in enumerate(order)}
    keyed: list[tuple[tuple[int, int, int, int], _Exchange]] = []
    anchor = (-1, 0, -1)
    left_out = 0
    for i, ex in enumerate(items):
        if ex.source != "panel" and ex.cell_id is not None:
            if ex.cell_id not in pos:
                left_out += 1  # its cell was deleted: out of the conversation (§10)
                continue
            anchor = (pos[ex.cell_id], 0, i)
            keyed.append(((*anchor, 0), ex))
        elif ex.source == "panel" and ex.after_cell in pos:
            anchor = (pos[ex.after_cell], 1, i)
            keyed.append(((*anchor, 0), ex))
        else:  # no cell to follow: it stays after the exchange it followed in the record
            keyed.append(((*anchor, i + 1), ex))
    keyed.sort(key=lambda k: k[0])
    return [ex for _, ex in keyed], left_out


def _sessions(
    record: Any, order: Sequence[str] | None, session: str | None
) -> tuple[list[_Session], dict[str, Any]]:
    clean = validate_record(record)
    names = list(clean["sessions"])
    if session is not None and session not in clean["sessions"]:
        known = ", ".join(names) if names else "none"
        raise ConfigurationError(f"no session {session!r} in the notebook's record (sessions: {known})")
    out = []
    for name in [session] if session is not None else names:
        s = clean["sessions"][name]
        raw = record["sessions"][name]
        after = _after_cells(raw)
        items = []
        n = 0
        for ex in exchanges(s["turns"]):
            first = ex[0]
            items.append(_Exchange(ex, first.meta.get("cell_id"), first.meta.get("source", "cell"),
                                   after[n] if n < len(after) else None))
            n += len(ex)
        provider = s["provider"]["name"] or "unknown"
        shown, left_out = _ordered(items, order)
        rows: dict[str, UsageRow] = {}
        for shown_ex in shown:
            for t in shown_ex.turns:
                if t.role == "assistant" and t.requested:
                    model = t.model or s["provider"]["model"] or "unknown"
                    rows.setdefault(model, UsageRow(provider, model)).add(t.tokens, t.cost, t.free)
        out.append(_Session(name, provider, s["provider"]["model"], s["system_prompt"], shown,
                            left_out, list(rows.values())))
    return out, clean


def _calls(turns: list[Turn], i: int) -> list[str]:
    nxt = turns[i + 1] if i + 1 < len(turns) else None
    results = {r.id: r for r in nxt.tool_results} if nxt is not None else {}
    return [call_line(c.name, c.arguments, results.get(c.id)) for c in turns[i].tool_requests]


def _images(t: Turn) -> list[str]:
    """A turn's images as URLs to link to (an inline ``data:`` image is only said)."""
    return [c.url for c in t.contents if isinstance(c, ContentImage)]


def _line(s: str, limit: int = 200) -> str:
    """A record's string (a name, an id) on one line, cut."""
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _where(ex: _Exchange) -> str:
    started = ex.turns[0].started_at
    when = started.strftime("%Y-%m-%d %H:%M") if started is not None else None
    src = "panel" if ex.source == "panel" else ("cell " + _line(ex.cell_id, 64) if ex.cell_id else "cell")
    return " · ".join(p for p in (src, when) if p)


def _exchange_footer(s: _Session, ex: _Exchange) -> str | None:
    replies = [t for t in ex.turns if t.role == "assistant"]
    if not replies:
        return None
    line = exchange_footer(ex.turns, model=s.model)
    if replies[-1].partial:
        line += " · partial"
    return line


_SPEND_COLS = ("session", "provider", "model", "requests", "input", "output", "cached", "cost")
_LEDGER_COLS = ("provider", "model", "requests", "input", "output", "cached", "cost")


def _row_cells(r: UsageRow) -> list[str]:
    tokens = [format_tokens(n, unknown=r.unknown_tokens) for n in (r.input, r.output, r.cached)]
    cost = format_row_cost(r.cost, unknown=r.unknown_cost, free=r.free, prose=True)
    return [r.provider, r.model, f"{r.turns:,}", *tokens, cost]


def _spend(
    sessions: list[_Session], clean: dict[str, Any], whole: bool
) -> tuple[list[list[str]], list[list[str]]]:
    """The exported conversation's spend per session and model (and a total), and, for the whole
    notebook, its ledger (every answer, replaced and reset ones too)."""
    table = [[s.name, *_row_cells(r)] for s in sessions for r in s.rows]
    all_rows = [r for s in sessions for r in s.rows]
    if len(all_rows) > 1:
        total = UsageRow("", "")
        for r in all_rows:
            total.merge(r)
        cells = _row_cells(total)  # free only when every row is (UsageRow.free)
        table.append(["total", "", "", *cells[2:]])
    ledger = [_row_cells(UsageRow.from_dict(u)) for u in clean["usage"]] if whole else []
    return table, ledger


def _left_out_note(s: _Session) -> str | None:
    if not s.left_out:
        return None
    return (f"{s.left_out:,} exchange{'s' * (s.left_out > 1)} of cells no longer in the notebook "
            "left out (counted in the notebook's spend below).")


def _counts(sessions: list[_Session]) -> str:
    n = sum(len(s.exchanges) for s in sessions)
    return (f"{len(sessions)} session{'s' * (len(sessions) != 1)}, {n:,} exchange{'s' * (n != 1)}, "
            "exported by jupyter_llmchat.")


# -- Markdown ------------------------------------------------------------------------------------


def _md_table(head: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    def cell(v: str) -> str:
        return safe_markdown(v).replace("|", "\\|").replace("\n", " ")

    rule = "|" + "|".join("---:" if h in _NUMERIC else "---" for h in head) + "|"
    lines = ["| " + " | ".join(head) + " |", rule]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


_NUMERIC = frozenset({"requests", "input", "output", "cached", "cost"})


def _md_turn(s: _Session, turns: list[Turn], i: int) -> list[str]:
    t = turns[i]
    out: list[str] = []
    if t.role == "user":
        if tool_round(t):
            return []  # a tool round's results: shown on its calls' lines
        text = t.text.strip("\r\n")
        if text:
            out.append(safe_markdown(text))
        out += [_md_image(u) for u in _images(t)]
        return out
    if t.thinking:
        thinking = safe_markdown(t.thinking.strip("\r\n"))
        out.append(f"<details><summary>thinking</summary>\n\n{thinking}\n\n</details>")
    text = t.text.strip("\r\n")
    if text:
        out.append(safe_markdown(text))
    calls = _calls(turns, i)
    if calls:
        out.append("\n".join(f"- 🔧 {safe_markdown(c)}" for c in calls))
    return out


def _md_image(url: str) -> str:
    if url.startswith(("http://", "https://")):
        return safe_markdown(f"![image]({url})")
    return "*[an inline image]*"


def to_markdown(record: Any, order: Sequence[str] | None = None, session: str | None = None, *,
                title: str | None = None) -> str:
    """The conversation of ``record`` (every session, or ``session``) as Markdown.

    ``order``: the notebook's cell ids, in order (None: the record's order). Raises
    ``RecordError`` for a record that fails validation, ``ConfigurationError`` for an unknown
    session.
    """
    sessions, clean = _sessions(record, order, session)
    out = [f"# {safe_markdown(title or 'Chat export')}"]
    out.append(f"*{_counts(sessions)}*")
    for s in sessions:
        head = f"## Session `{s.name}`" if re.fullmatch(r"[A-Za-z0-9_.\-]+", s.name) else "## Session"
        out.append(head)
        out.append(safe_markdown(_line(f"{s.provider} · {s.model or 'model not recorded'}")))
        if s.system_prompt:
            out.append(f"**system:** {safe_markdown(_line(s.system_prompt, 1_000_000))}")
        note = _left_out_note(s)
        if note:
            out.append(f"*{note}*")
        if not s.exchanges:
            out.append("*No exchanges.*")
        for n, ex in enumerate(s.exchanges, 1):
            if n > 1 and starts_conversation(ex.turns[0]):
                out.append(f"*{safe_markdown(NEW_LINE)}*")
            out.append(f"### {n}. you *· {safe_markdown(_where(ex))}*")
            answered = False
            for i, t in enumerate(ex.turns):
                if t.role == "assistant" and not answered:
                    out.append(f"**{safe_markdown(_line(t.model or s.model or 'assistant'))}**")
                    answered = True
                out += _md_turn(s, ex.turns, i)
            line = _exchange_footer(s, ex)
            if line:
                out.append(f"*{safe_markdown(line)}*")
    table, ledger = _spend(sessions, clean, session is None)
    out.append("## Spend")
    out.append(_md_table(_SPEND_COLS, table) if table else "*No answers.*")
    if ledger:
        out.append("All answers of this notebook, replaced and reset ones included:")
        out.append(_md_table(_LEDGER_COLS, ledger))
    return "\n\n".join(out) + "\n"


# -- HTML ----------------------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:52rem;margin:2rem auto;
padding:0 1rem;color:#1f2328;background:#fff}
h1{font-size:1.6rem}
h2{font-size:1.3rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2.5rem}
.meta,.where,.footer,.note{color:#59636e;font-size:.85rem}
.exchange{border-top:1px solid #eaeef2;padding:.6rem 0}
.you,.model{font-weight:600;margin:.6rem 0 .2rem}.model{color:#0550ae}
.prompt{background:#f6f8fa;border-left:3px solid #8c959f;padding:.1rem .8rem}
pre{background:#f6f8fa;padding:.6rem;overflow:auto}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em}
details{margin:.4rem 0;color:#59636e}summary{cursor:pointer}
ul.tools{list-style:none;padding-left:0;font-size:.9rem}ul.tools li::before{content:"\\1F527  "}
table{border-collapse:collapse;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.2rem .5rem;text-align:left}
td.n,th.n{text-align:right}
"""
#: Nothing may load: no script, no image, no remote style or font, no frame; only the inline style.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'; base-uri 'none'"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_SAFE_SCHEMES = frozenset({"http", "https", "mailto"})


def _link_ok(url: str) -> bool:
    """Only http(s), mailto and relative links (what a browser reads: controls dropped)."""
    plain = "".join(c for c in url if ord(c) > 0x20)
    m = _SCHEME.match(plain)
    return m is None or m.group(1).lower() in _SAFE_SCHEMES


def _renderer() -> Any:
    # Imported here: markdown-it-py is needed only when exporting to HTML, not at %load_ext.
    from markdown_it import MarkdownIt

    class Renderer(MarkdownIt):
        def validateLink(self, url: str) -> bool:  # noqa: N802 - markdown-it's name
            return _link_ok(url)

    md = Renderer("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])

    def image(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        alt = self.renderInlineAsText(token.children or [], options, env)
        return _image_link(str(token.attrGet("src") or ""), alt)

    def link_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        return str(self.renderToken(tokens, idx, options, env))

    md.add_render_rule("image", image)
    md.add_render_rule("link_open", link_open)
    return md


def _html_table(head: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    esc = html.escape
    cls = [' class="n"' if h in _NUMERIC else "" for h in head]
    rows = ["<tr>" + "".join(f"<th{c}>{esc(h)}</th>" for h, c in zip(head, cls)) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td{c}>{esc(v)}</td>" for v, c in zip(r, cls)) + "</tr>" for r in body]
    return "<table>" + "".join(rows) + "</table>"


def _html_turn(md: Any, turns: list[Turn], i: int) -> list[str]:
    t = turns[i]
    esc = html.escape
    out: list[str] = []
    if t.role == "user":
        if tool_round(t):
            return []
        text = t.text.strip("\r\n")
        body = md.render(text) if text else ""
        body += "".join(f"<p>{_html_image(u)}</p>" for u in _images(t))
        return [f'<div class="prompt">{body}</div>'] if body else []
    if t.thinking:
        out.append(f"<details><summary>thinking</summary>{md.render(t.thinking)}</details>")
    text = t.text.strip("\r\n")
    if text:
        out.append(f'<div class="answer">{md.render(text)}</div>')
    calls = _calls(turns, i)
    if calls:
        out.append('<ul class="tools">' + "".join(f"<li><code>{esc(c)}</code></li>" for c in calls) + "</ul>")
    return out


def _image_link(url: str, alt: str = "") -> str:
    """An image as a link: its text, then its URL shown (the link is followed only if clicked)."""
    esc = html.escape
    return (f'<a href="{esc(url)}" rel="nofollow noopener noreferrer">{esc(alt or "image")}</a> '
            f'<span class="url">({esc(url)})</span>')


def _html_image(url: str) -> str:
    if url.startswith(("http://", "https://")):
        return _image_link(url)
    return "<em>[an inline image]</em>"


def to_html(record: Any, order: Sequence[str] | None = None, session: str | None = None, *,
            title: str | None = None) -> str:
    """The conversation of ``record`` as one self-contained, inert HTML page (see the module's
    docstring); arguments and errors as ``to_markdown``."""
    sessions, clean = _sessions(record, order, session)
    md = _renderer()
    esc = html.escape
    title = title or "Chat export"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{esc(_counts(sessions))}</p>',
    ]
    for s in sessions:
        out.append(f"<section><h2>Session <code>{esc(s.name)}</code></h2>")
        out.append(f'<p class="meta">{esc(s.provider)} · {esc(s.model or "model not recorded")}</p>')
        if s.system_prompt:
            out.append(f'<p class="meta"><b>system:</b> {esc(s.system_prompt)}</p>')
        note = _left_out_note(s)
        if note:
            out.append(f'<p class="note">{esc(note)}</p>')
        if not s.exchanges:
            out.append('<p class="note">No exchanges.</p>')
        for n, ex in enumerate(s.exchanges, 1):
            if n > 1 and starts_conversation(ex.turns[0]):
                out.append(f'<p class="note">{esc(NEW_LINE)}</p>')
            out.append(f'<div class="exchange"><div class="you">{n}. you '
                       f'<span class="where">· {esc(_where(ex))}</span></div>')
            answered = False
            for i, t in enumerate(ex.turns):
                if t.role == "assistant" and not answered:
                    out.append(f'<div class="model">{esc(t.model or s.model or "assistant")}</div>')
                    answered = True
                out += _html_turn(md, ex.turns, i)
            line = _exchange_footer(s, ex)
            if line:
                out.append(f'<p class="footer">{esc(line)}</p>')
            out.append("</div>")
        out.append("</section>")
    table, ledger = _spend(sessions, clean, session is None)
    out.append("<section><h2>Spend</h2>")
    out.append(_html_table(_SPEND_COLS, table) if table else '<p class="note">No answers.</p>')
    if ledger:
        out.append('<p class="meta">All answers of this notebook, replaced and reset ones included:</p>')
        out.append(_html_table(_LEDGER_COLS, ledger))
    out.append("</section></body></html>")
    return "\n".join(out) + "\n"


# -- files ---------------------------------------------------------------------------------------


def export_format(path: str | pathlib.Path) -> str:
    """``"markdown"`` or ``"html"``, from the file's extension; a ConfigurationError otherwise."""
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigurationError(
            f"cannot tell the export format from {str(path)!r}: name the file .md or .html")
    return FORMATS[suffix]


def export_record(record: Any, order: Sequence[str] | None, path: str | pathlib.Path,
                  session: str | None = None, *, title: str | None = None) -> pathlib.Path:
    """Write the conversation of ``record`` to ``path`` (.md or .html); return the path.

    What ``%chat_export`` calls with the kernel's record and order of cells, and
    ``jupyter-llmchat export`` with a saved notebook's. Nothing is written when the format is
    unknown, the record invalid or the session unknown.
    """
    fmt = export_format(path)
    render = to_html if fmt == "html" else to_markdown
    text = render(record, order, session, title=title)
    out = pathlib.Path(path)
    out.write_text(text, encoding="utf-8")
    return out


def notebook_record(nb: Any) -> tuple[Any, list[str]]:
    """A saved notebook's (parsed JSON) record and order of cells; RecordError when it has none."""
    if not isinstance(nb, dict):
        raise RecordError("the file is not a notebook (no JSON object)")
    meta = nb.get("metadata")
    record = meta.get(KEY) if isinstance(meta, dict) else None
    if record is None:
        raise RecordError(f"the notebook has no chat record (metadata.{KEY})")
    cells = nb.get("cells")
    order = [c["id"] for c in cells if isinstance(c, dict) and isinstance(c.get("id"), str)] \
        if isinstance(cells, list) else []
    return record, order
