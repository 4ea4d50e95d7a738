"""What ``%chat_usage``, ``%chat_history`` and ``%chat_config`` show: HTML with a text twin."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from .._core._chat import Chat
from .._core._markdown import safe_markdown
from .._core._spend import exchange_spend
from .._core._turns import (
    NEW_LINE,
    call_line,
    exchange_starts,
    exchanges,
    starts_conversation,
    tool_round,
)
from .._core._usage import UsageRow, format_row_cost, format_tokens

__all__ = ["ConfigView", "HistoryView", "NoConversation", "UsageReport", "usage_rows"]


@dataclass
class _Row(UsageRow):
    """A usage row of one session. ``turns`` counts requests (a tool round is one);
    ``answers`` counts the exchanges' answers, the number a reader expects."""

    session: str = ""
    answers: int = 0

    def merge(self, other: UsageRow) -> None:
        super().merge(other)
        if isinstance(other, _Row):
            self.answers += other.answers


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
            rows[key].add(t.tokens, t.cost, t.free)
            if not t.tool_requests:  # a turn that asks for tools is a round inside the answer
                rows[key].answers += 1
    return list(rows.values())


def _num(v: int | None, unknown: int) -> str:
    return format_tokens(v, unknown=unknown)


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
        return [r.session, r.provider, r.model, str(r.answers), _num(r.input, r.unknown_tokens),
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
        """One line per exchange, numbered from 1; its tool rounds are added up inside it."""
        out = []
        for name, chat in self.sessions.items():
            n = 0
            for exchange in exchanges(chat.get_turns()):
                replies = [t for t in exchange if t.role == "assistant"]
                if not replies:
                    continue
                n += 1
                last = replies[-1]
                tok, cost, requests, free = exchange_spend(exchange)
                finish = (last.finish_reason or "") + (" (partial)" if last.partial else "")
                if requests > 1:
                    finish += f" ({requests - 1} tool round{'s' * (requests > 2)})"
                out.append([
                    name, str(n), last.model or "", last.meta.get("source", ""),
                    _num(tok.input, 0), _num(tok.output, 0), _num(tok.cached, 0),
                    _usd(cost, 0, free), finish,
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
        rounds = sum(r.turns - r.answers for r in self.rows)
        if rounds > 0:
            notes.append(f"Tokens and cost include {rounds} tool round{'s' * (rounds > 1)} (a request "
                         "whose reply asked for tools), counted inside the answer it led to.")
        if any(r.unknown_cost for r in self.rows):
            notes.append("Cost n/a: no known price for this provider and model (local models are free).")
        return notes

    _SPEND_TITLE = "All answers of this notebook, replaced and reset ones included"
    #: The ledger counts requests: a tool round is one, so the column says so.
    _SPEND_COLS = ("provider", "model", "requests", "input", "output", "cached", "cost")

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
                list(self._SPEND_COLS), self._spend_rows()))
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
            parts.append(_text_table(list(self._SPEND_COLS), self._spend_rows()))
        parts += self._footnotes()
        return "\n".join(parts)


#: Columns that hold numbers: right-aligned; every other column is text, left-aligned.
_NUMERIC = frozenset({"#", "answers", "requests", "input", "output", "cached", "cost"})


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
        starts = exchange_starts(turns)
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
        for i, t in enumerate(self.turns):
            if tool_round(t):  # shown on its calls' lines, not as a message from "you"
                continue
            label = "**you**" if t.role == "user" else f"**{safe_markdown(t.model or 'assistant')}**"
            extra = " *(partial)*" if t.partial else ""
            src = f" *· {t.meta['source']}*" if t.meta.get("source") == "panel" else ""
            # A rule before each question: one exchange per block, the same space everywhere.
            if t.role == "user" and out:
                out.append("---")
            if starts_conversation(t) and i > 0:
                out.append(f"*{NEW_LINE}*")
            calls = self._calls(i)
            if calls and not _trim(t.text):  # a tool round: its calls only, no empty answer
                out.append("\n".join(f"- 🔧 {safe_markdown(c)}" for c in calls))
                continue
            out.append(f"{label}{extra}{src}\n\n{safe_markdown(_trim(t.text))}")
            if calls:
                out.append("\n".join(f"- 🔧 {safe_markdown(c)}" for c in calls))
        return "\n\n".join(out)

    def _calls(self, i: int) -> list[str]:
        """Turn ``i``'s tool calls, one short line each: name, short arguments, ok or error."""
        t = self.turns[i]
        nxt = self.turns[i + 1] if i + 1 < len(self.turns) else None
        results = {r.id: r for r in nxt.tool_results} if nxt is not None else {}
        return [call_line(c.name, c.arguments, results.get(c.id)) for c in t.tool_requests]

    def __repr__(self) -> str:
        if not self.turns:
            return f"Session {self.name!r} has no turns yet."
        out = []
        for i, t in enumerate(self.turns):
            if tool_round(t):
                continue
            if starts_conversation(t) and i > 0:
                out.append(f"-- {NEW_LINE} --")
            calls = [f"[tool] {c}" for c in self._calls(i)]
            text = [f"[{t.role}{' partial' if t.partial else ''}] {_trim(t.text)}"] if _trim(t.text) or not calls else []
            out.append("\n".join(text + calls))
        return "\n\n".join(out)


class NoConversation:
    """``%chat_history`` before anything was asked: a friendly line, not an error."""

    def __init__(self, name: str, others: list[str]) -> None:
        self.text = (f"No conversation yet in session {name!r}: ask with %chat or %%chat"
                     + (f" (sessions with turns: {', '.join(others)}; show one with -s NAME)." if others else "."))

    def _repr_markdown_(self) -> str:
        return f"*{safe_markdown(self.text)}*"

    def __repr__(self) -> str:
        return self.text


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
