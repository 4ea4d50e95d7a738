"""What ``%chat_usage``, ``%chat_history`` and ``%chat_config`` show: HTML with a text twin."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from ._chat import Chat
from ._markdown import safe_markdown
from ._usage import UsageRow, format_row_cost

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


def _usd(v: float | None, unknown: int, free: bool) -> str:
    return format_row_cost(v, unknown=unknown, free=free)


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
                _usd(r.cost, r.unknown_cost, r.free)]

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
                    _num(tok.cached if tok else None, 0), _usd(t.cost, 0, chat.provider.free),
                    (t.finish_reason or "") + (" (partial)" if t.partial else ""),
                ])
        return out

    _TURN_COLS = ("session", "#", "model", "from", "input", "output", "cached", "cost", "finish")

    def _footnotes(self) -> list[str]:
        notes = []
        if not self.rows:
            notes.append("No answers in the sessions now (reset or none yet); the table above counts "
                         "every answer of this notebook." if self.spend else "No answers yet.")
        unknown = [(chat, t) for chat in self.sessions.values() for t in chat.get_turns()
                   if t.role == "assistant" and not (t.tokens and t.tokens.known)]
        if unknown:
            broken = [t for _, t in unknown if t.partial]
            servers = {chat.provider.name for chat, t in unknown if not t.partial}
            note = f"n/a or +: no token counts for {len(unknown)} answer{'s' * (len(unknown) > 1)}"
            why = []
            if len(broken) < len(unknown):
                why.append("llama.cpp's server sends none while streaming"
                           if servers and all(n.startswith("llama.cpp") for n in servers)
                           else "the server did not report them")
            if broken:
                why.append(f"{len(broken)} ended early (the stream broke or was stopped) "
                           "before the server could report them")
            notes.append(f"{note}: {'; '.join(why)}.")
        if any(r.unknown_cost for r in self.rows):
            notes.append("Cost n/a: no known price for this provider and model (local models are free).")
        return notes

    _SPEND_TITLE = "All answers of this notebook, replaced and reset ones included"

    def _spend_rows(self) -> list[list[str]]:
        return [[r["provider"], r["model"], str(r["turns"]), _num(r["input"], 0), _num(r["output"], 0),
                 _num(r["cached"], 0), _usd(r["cost_usd"], 0, UsageRow.from_dict(r).free)] for r in self.spend or []]

    def _repr_html_(self) -> str:
        head, body, total = self._table()
        parts = ['<div class="jupyter-llmchat-usage">']
        if self.rows or self.spend is None:
            parts.append(_html_table(head, body, total))
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
        parts = []
        if self.rows or self.spend is None:
            parts.append(_text_table(head, body + ([total] if total else [])))
        if self.show_turns:
            parts.append(_text_table(list(self._TURN_COLS), self._turn_lines()))
        if self.spend is not None:
            parts.append(self._SPEND_TITLE + ":")
            parts.append(_text_table(["provider", "model", "answers", "input", "output", "cached", "cost"],
                                     self._spend_rows()))
        parts += self._footnotes()
        return "\n".join(parts)


#: Columns that hold numbers: right-aligned; every other column is text, left-aligned.
_NUMERIC = frozenset({"#", "answers", "input", "output", "cached", "cost"})


def _html_table(head: list[str], body: list[list[str]], total: list[str] | None = None) -> str:
    esc = html.escape
    # JupyterLab right-aligns every table cell; text reads better from the left.
    align = [f' style="text-align: {"right" if h in _NUMERIC else "left"}"' for h in head]
    rows = ["<tr>" + "".join(f"<th{a}>{esc(h)}</th>" for h, a in zip(head, align)) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td{a}>{esc(c)}</td>" for c, a in zip(r, align)) + "</tr>" for r in body]
    if total:
        rows.append("<tr>" + "".join(f"<td{a}><b>{esc(c)}</b></td>" for c, a in zip(total, align)) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])


class HistoryView:
    """A session's turns (``%chat_history``), as Markdown."""

    def __init__(self, name: str, chat: Chat, last: int | None = None) -> None:
        """``last``: only the last ``last`` exchanges (a question and its answer)."""
        self.name = name
        turns = chat.get_turns()
        starts = [i for i, t in enumerate(turns) if t.role == "user"]
        if last and len(starts) > last:
            turns = turns[starts[-last]:]
        self.turns = turns
        self.system = chat.system_prompt

    def _repr_markdown_(self) -> str:
        if not self.turns:
            return f"*Session `{self.name}` has no turns yet.*"
        out = []
        if self.system:
            out.append(f"**system:** {safe_markdown(_quote(self.system))}")
        for t in self.turns:
            label = "**you**" if t.role == "user" else f"**{safe_markdown(t.model or 'assistant')}**"
            extra = " *(partial)*" if t.partial else ""
            src = f" *· {t.meta['source']}*" if t.meta.get("source") == "panel" else ""
            # A rule before each question: one exchange per block, the same space everywhere.
            if t.role == "user" and out:
                out.append("---")
            out.append(f"{label}{extra}{src}\n\n{safe_markdown(_trim(t.text))}")
        return "\n\n".join(out)

    def __repr__(self) -> str:
        if not self.turns:
            return f"Session {self.name!r} has no turns yet."
        return "\n\n".join(
            f"[{t.role}{' partial' if t.partial else ''}] {_trim(t.text)}" for t in self.turns
        )


def _trim(s: str) -> str:
    """Without the blank lines around it (a cell's prompt ends with one, an answer does not)."""
    return s.strip("\r\n")


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
