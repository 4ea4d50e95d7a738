"""What ``%chat_usage``, ``%chat_history`` and ``%chat_config`` show: HTML with a text twin."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ._chat import Chat
from ._usage import UsageRow

__all__ = ["ConfigView", "HistoryView", "UsageReport", "usage_rows"]


@dataclass
class _Row(UsageRow):
    """A usage row of one session."""

    session: str = ""


def usage_rows(sessions: dict[str, Chat]) -> list[_Row]:
    rows: dict[tuple[str, str], _Row] = {}
    for name, chat in sessions.items():
        for t in chat.get_turns():
            if t.role != "assistant":
                continue
            model = t.model or chat.provider.model or "unknown"
            key = (name, model)
            if key not in rows:
                rows[key] = _Row(chat.provider.name, model, session=name)
            rows[key].add(t.tokens, t.cost)
    return list(rows.values())


def _num(v: int | None, unknown: int) -> str:
    if v is None:
        return "n/a"
    return f"{v:,}" + ("+" if unknown else "")


#: Provider name of the bundled model (``_local.PROVIDER_NAME``), whose answers are free.
_LOCAL = "llama.cpp (local)"


def _usd(v: float | None, unknown: int, provider: str = "") -> str:
    if v is None:
        return "n/a"
    if v == 0 and provider == _LOCAL:  # known to be free, unlike an unknown price ("n/a")
        return "$0, local" + ("+" if unknown else "")
    if v == 0 or v >= 1:
        s = f"${v:,.2f}"
    elif v >= 0.01:
        s = f"${v:.4f}"
    else:  # small but not free: show its digits rather than $0.0000
        s = f"${v:.8f}".rstrip("0")
    return s + ("+" if unknown else "")


class UsageReport:
    """Tokens and cost per session and model, with totals (``%chat_usage``)."""

    COLUMNS = ("session", "provider", "model", "answers", "input", "output", "cached", "cost")

    def __init__(
        self,
        sessions: dict[str, Chat],
        *,
        turns: bool = False,
        spend: list[dict[str, Any]] | None = None,
    ) -> None:
        self.rows = usage_rows(sessions)
        self.sessions = sessions
        self.show_turns = turns
        #: Rows of ``token_usage()`` form for the "all spend" table (``--all``), or None.
        self.spend = spend

    def _cells(self, r: _Row) -> list[str]:
        return [r.session, r.provider, r.model, str(r.turns), _num(r.input, r.unknown_tokens),
                _num(r.output, r.unknown_tokens), _num(r.cached, r.unknown_tokens),
                _usd(r.cost, r.unknown_cost, r.provider)]

    def _table(self) -> tuple[list[str], list[list[str]], list[str] | None]:
        body = [self._cells(r) for r in self.rows]
        total = None
        if len(self.rows) > 1:
            t = _Row("", "", session="total")
            for r in self.rows:
                t.merge(r)
            total = self._cells(t)
        return list(self.COLUMNS), body, total

    def _turn_lines(self) -> list[list[str]]:
        out = []
        for name, chat in self.sessions.items():
            for i, t in enumerate(chat.get_turns()):
                if t.role != "assistant":
                    continue
                tok = t.tokens
                out.append([
                    name, str(i // 2 + 1), t.model or "", t.meta.get("source", ""),
                    _num(tok.input if tok else None, 0), _num(tok.output if tok else None, 0),
                    _num(tok.cached if tok else None, 0), _usd(t.cost, 0, chat.provider.name),
                    (t.finish_reason or "") + (" (partial)" if t.partial else ""),
                ])
        return out

    _TURN_COLS = ("session", "#", "model", "from", "input", "output", "cached", "cost", "finish")

    def _footnotes(self) -> list[str]:
        notes = []
        if not self.rows:
            notes.append("No answers yet.")
        if any(r.unknown_tokens for r in self.rows):
            notes.append("n/a or +: the server did not report tokens for some answers "
                         "(llama.cpp's server reports none while streaming).")
        if any(r.unknown_cost for r in self.rows):
            notes.append("Cost n/a: no known price for this provider and model (local models are free).")
        return notes

    _SPEND_TITLE = "All answers of this notebook, replaced and reset ones included"

    def _spend_rows(self) -> list[list[str]]:
        return [[r["provider"], r["model"], str(r["turns"]), _num(r["input"], 0), _num(r["output"], 0),
                 _num(r["cached"], 0), _usd(r["cost_usd"], 0, r["provider"])] for r in self.spend or []]

    def _repr_html_(self) -> str:
        head, body, total = self._table()
        parts = ['<div class="jupyter-llmchat-usage">', _html_table(head, body, total)]
        if self.show_turns:
            parts.append("<p><b>Answers</b></p>" + _html_table(list(self._TURN_COLS), self._turn_lines()))
        if self.spend is not None:
            parts.append(f"<p><b>{self._SPEND_TITLE}</b></p>" + _html_table(
                ["provider", "model", "answers", "input", "output", "cached", "cost"], self._spend_rows()))
        parts += [f"<p><small>{html.escape(n)}</small></p>" for n in self._footnotes()]
        parts.append("</div>")
        return "".join(parts)

    def __repr__(self) -> str:
        head, body, total = self._table()
        parts = [_text_table(head, body + ([total] if total else []))]
        if self.show_turns:
            parts.append(_text_table(list(self._TURN_COLS), self._turn_lines()))
        if self.spend is not None:
            parts.append(self._SPEND_TITLE + ":")
            parts.append(_text_table(["provider", "model", "answers", "input", "output", "cached", "cost"],
                                     self._spend_rows()))
        parts += self._footnotes()
        return "\n".join(parts)


def _html_table(head: list[str], body: list[list[str]], total: list[str] | None = None) -> str:
    esc = html.escape
    rows = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body]
    if total:
        rows.append("<tr>" + "".join(f"<td><b>{esc(c)}</b></td>" for c in total) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])


class HistoryView:
    """A session's turns (``%chat_history``), as Markdown."""

    def __init__(self, name: str, chat: Chat, last: int | None = None) -> None:
        self.name = name
        turns = chat.get_turns()
        self.turns = turns[-last:] if last else turns
        self.system = chat.system_prompt

    def _repr_markdown_(self) -> str:
        if not self.turns:
            return f"*Session `{self.name}` has no turns yet.*"
        out = []
        if self.system:
            out.append(f"**system:** {markdown_text(_quote(self.system))}")
        for t in self.turns:
            label = "**you**" if t.role == "user" else f"**{html.escape(t.model or 'assistant')}**"
            extra = " *(partial)*" if t.partial else ""
            src = f" *· {t.meta['source']}*" if t.meta.get("source") == "panel" else ""
            out.append(f"{label}{extra}{src}\n\n{markdown_text(t.text)}")
        return "\n\n---\n\n".join(out)

    def __repr__(self) -> str:
        if not self.turns:
            return f"Session {self.name!r} has no turns yet."
        return "\n\n".join(
            f"[{t.role}{' partial' if t.partial else ''}] {t.text}" for t in self.turns
        )


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TICKS = re.compile(r"`+")


def markdown_text(text: str) -> str:
    """A turn's text as Markdown that shows any HTML in it as text, never as markup.

    Turns may come from a notebook someone else wrote. Their Markdown is kept (answers are
    Markdown), but outside code, where a renderer would read HTML, ``&`` and ``<`` become
    entities. Anything unclear (a backslash before a backtick, a code span over two lines) is
    escaped too: too much escaping only looks odd, too little would let markup through. A fence
    left open is closed, so it cannot swallow the turns after it.
    """
    out: list[str] = []
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line)
        if fence is not None:
            out.append(line)
            closing = m is not None and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence)
            if closing and m is not None and not line[m.end():].strip():
                fence = None
            continue
        if m and not (m.group(1)[0] == "`" and "`" in line[m.end():]):
            fence = m.group(1)
            out.append(line)
            continue
        out.append(_inline_text(line))
    if fence is not None:
        out.append(("" if text.endswith("\n") else "\n") + fence)
    return "".join(out)


def _inline_text(line: str) -> str:
    out: list[str] = []
    pos = 0
    while (m := _TICKS.search(line, pos)) is not None:
        close = None
        if m.start() == 0 or line[m.start() - 1] != "\\":
            close = re.compile(r"(?<!`)" + m.group() + r"(?!`)").search(line, m.end())
        if close is None:  # not a code span: the backticks are text
            out.append(_escape_html(line[pos:m.end()]))
        else:
            out.append(_escape_html(line[pos:m.start()]) + line[m.start():close.end()])
        pos = m.end() if close is None else close.end()
    out.append(_escape_html(line[pos:]))
    return "".join(out)


def _escape_html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;")


def _quote(s: str) -> str:
    return s.replace("\n", " ")


@dataclass
class ConfigView:
    """``%chat_config``: effective settings (secrets masked) and the live sessions."""

    rows: dict[str, Any]
    sessions: dict[str, str] = field(default_factory=dict)
    note: str = ""

    @staticmethod
    def _fmt(v: Any) -> str:
        return json.dumps(v) if isinstance(v, (dict, list)) else str(v)

    def _repr_html_(self) -> str:
        esc = html.escape
        body = [[f"ChatMagics.{k}", self._fmt(v)] for k, v in self.rows.items()]
        out = _html_table(["setting", "value"], body)
        if self.sessions:
            out += "<p><b>Sessions</b></p>" + _html_table(["session", "provider"], [[k, v] for k, v in self.sessions.items()])
        return out + f"<p><small>{esc(self.note)}</small></p>"

    def __repr__(self) -> str:
        out = [_text_table(["setting", "value"], [[f"ChatMagics.{k}", self._fmt(v)] for k, v in self.rows.items()])]
        if self.sessions:
            out.append(_text_table(["session", "provider"], [[k, v] for k, v in self.sessions.items()]))
        out.append(self.note)
        return "\n".join(out)
