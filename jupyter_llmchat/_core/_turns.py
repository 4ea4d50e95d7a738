"""Turns and their typed contents: the conversation's record, as in ellmer's ``Turn``."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "NEW_KEY",
    "NEW_LINE",
    "SHORT_ARGUMENTS",
    "SHORT_ERROR",
    "Content",
    "ContentImage",
    "ContentText",
    "ContentThinking",
    "ContentToolRequest",
    "ContentToolResult",
    "Tokens",
    "Turn",
    "call_line",
    "check_tool_pairs",
    "content_from_dict",
    "conversation_start",
    "exchange_end",
    "exchange_starts",
    "exchanges",
    "one_line",
    "opens_exchange",
    "record_exchanges",
    "record_opens_exchange",
    "short_arguments",
    "starts_conversation",
    "tool_round",
]

T = TypeVar("T")

Role = Literal["system", "user", "assistant"]
ToolStatus = Literal["ok", "refused", "error"]
TOOL_STATUSES = ("ok", "refused", "error")


@dataclass(frozen=True)
class ContentText:
    text: str
    type: Literal["text"] = field(default="text", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "text", "text": self.text}


@dataclass(frozen=True)
class ContentThinking:
    """Reasoning the model showed before its answer (``reasoning_content`` deltas)."""

    thinking: str
    type: Literal["thinking"] = field(default="thinking", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "thinking", "thinking": self.thinking}


@dataclass(frozen=True)
class ContentImage:
    """An image, by URL (``data:`` URLs included)."""

    url: str
    type: Literal["image"] = field(default="image", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "image", "url": self.url}


@dataclass(frozen=True)
class ContentToolRequest:
    """The model asks to call tool ``name`` with ``arguments``; ``id`` ties the result to it."""

    id: str
    name: str
    arguments: dict[str, Any]
    type: Literal["tool_request"] = field(default="tool_request", init=False)
    #: The ``Tool`` the call names, on the request ``on_tool_request`` callbacks receive (so a
    #: policy can read its annotations); None elsewhere. Never compared, shown or recorded.
    tool: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "tool_request", "id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class ContentToolResult:
    """What the call ``id`` returned (``value``, JSON-able) or why it failed (``error``, sent back
    to the model as the result); ``name`` is the tool's, for display.

    ``status`` is "ok", "refused" (``ToolRejectError``: by the tool, a callback or the approval)
    or "error" (it raised, or never ran); left out, it follows ``error``. ``duration`` is how
    long the call ran, in seconds (None: it did not run, or an older record did not say)."""

    id: str
    value: Any = None
    error: str | None = None
    name: str | None = None
    status: ToolStatus | None = None
    #: A measurement, not part of what the call returned: left out of comparisons.
    duration: float | None = field(default=None, compare=False)
    type: Literal["tool_result"] = field(default="tool_result", init=False)

    def __post_init__(self) -> None:
        if self.status not in TOOL_STATUSES:
            object.__setattr__(self, "status", "ok" if self.error is None else "error")

    def to_dict(self) -> dict[str, Any]:
        d = {"type": "tool_result", "id": self.id, "value": self.value, "error": self.error,
             "status": self.status}
        if self.name is not None:
            d["name"] = self.name
        if self.duration is not None:
            d["duration_s"] = round(self.duration, 3)
        return d


Content = Union[ContentText, ContentThinking, ContentImage, ContentToolRequest, ContentToolResult]


def content_from_dict(d: dict[str, Any]) -> Content:
    """Rebuild one content from its ``to_dict()`` form; raises ValueError on anything else."""
    kind = d.get("type")
    if kind == "text" and isinstance(d.get("text"), str):
        return ContentText(d["text"])
    if kind == "thinking" and isinstance(d.get("thinking"), str):
        return ContentThinking(d["thinking"])
    if kind == "image" and isinstance(d.get("url"), str):
        return ContentImage(d["url"])
    if kind == "tool_request" and isinstance(d.get("id"), str) and isinstance(d.get("name"), str):
        args = d.get("arguments") or {}
        if not isinstance(args, dict):
            raise ValueError("tool_request arguments must be an object")
        return ContentToolRequest(d["id"], d["name"], args)
    if kind == "tool_result" and isinstance(d.get("id"), str):
        error, name = d.get("error"), d.get("name")
        if error is not None and not isinstance(error, str):
            raise ValueError("tool_result error must be a string or null")
        if name is not None and not isinstance(name, str):
            raise ValueError("tool_result name must be a string or null")
        # Additive fields: a value this reader does not know is left out, never an error.
        status = d.get("status") if d.get("status") in TOOL_STATUSES else None
        duration = d.get("duration_s")
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
            duration = None
        return ContentToolResult(d["id"], d.get("value"), error, name, status, duration)
    raise ValueError(f"not a content: type={kind!r}")


@dataclass(frozen=True)
class Tokens:
    """Token counts of one request; None where the server did not say (never a made-up 0).

    ``input`` counts every prompt token, cached ones included; ``cached`` is the cached part.
    """

    input: int | None = None
    output: int | None = None
    cached: int | None = None

    @property
    def known(self) -> bool:
        return self.input is not None or self.output is not None

    def to_dict(self) -> dict[str, int | None]:
        return {"input": self.input, "output": self.output, "cached": self.cached}


def _iso(t: _dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


@dataclass
class Turn:
    """One message of the conversation.

    Assistant turns carry ``tokens`` and ``cost`` of the request that produced them;
    ``partial`` marks an answer cut short (interrupt, stop, broken stream).
    ``meta`` holds annotations from the Jupyter layer (``cell_id``, ``source``).

    A history alternates user, assistant, user, ... and ends with an assistant turn. Tools keep
    that shape, as in ellmer and chatlas: an assistant turn with ``ContentToolRequest``s is
    followed by a user turn holding one ``ContentToolResult`` per request (same ids), sent on the
    wire as ``tool`` messages; then the model's next assistant turn. So one exchange with tools is
    user (prompt), assistant (requests), user (results), ..., assistant (answer).

    ``free``: the answer is known to have cost nothing (its provider said so: the bundled
    model's), so a cost of 0 reads "free, local", not a priced model's "$0"; in the record
    only where true (DESIGN §6: an additive field).

    ``skipped`` counts the chunks of the answer's stream that could not be read and were
    skipped (0 almost always); views say so once. It is not part of the record (``to_dict``).
    """

    role: Role
    contents: list[Content]
    tokens: Tokens | None = None
    cost: float | None = None
    finish_reason: str | None = None
    partial: bool = False
    started_at: _dt.datetime | None = None
    duration: float | None = None
    model: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    free: bool = False

    @classmethod
    def user(cls, text: str, **kw: Any) -> Turn:
        return cls("user", [ContentText(text)], **kw)

    @property
    def text(self) -> str:
        """The text contents joined (thinking excluded)."""
        return "".join(c.text for c in self.contents if isinstance(c, ContentText))

    @property
    def thinking(self) -> str:
        return "".join(c.thinking for c in self.contents if isinstance(c, ContentThinking))

    @property
    def requested(self) -> bool:
        """An assistant turn a request produced: not the partial turn that only closes the
        history after a cut tool round (no request was under way; its tokens are 0 in, 0 out)."""
        tok = self.tokens
        return self.role == "assistant" and not (
            self.partial and tok is not None and tok.input == 0 and tok.output == 0
        )

    @property
    def tool_requests(self) -> list[ContentToolRequest]:
        return [c for c in self.contents if isinstance(c, ContentToolRequest)]

    @property
    def tool_results(self) -> list[ContentToolResult]:
        return [c for c in self.contents if isinstance(c, ContentToolResult)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by ``to_json()`` and by the notebook metadata (schema v1)."""
        d: dict[str, Any] = {"role": self.role, "contents": [c.to_dict() for c in self.contents]}
        d.update(self.meta)
        d["started_at"] = _iso(self.started_at)
        d["duration_s"] = None if self.duration is None else round(self.duration, 3)
        if self.role == "assistant":
            d["model"] = self.model
            d["tokens"] = (self.tokens or Tokens()).to_dict()
            d["cost_usd"] = self.cost
            d["finish_reason"] = self.finish_reason
            d["partial"] = self.partial
            if self.free:
                d["free"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        """Inverse of ``to_dict``; raises ValueError (or TypeError) on a malformed record."""
        role = d.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"bad role {role!r}")
        contents_raw = d.get("contents")
        if not isinstance(contents_raw, list):
            raise ValueError("contents must be a list")
        contents = [content_from_dict(c) for c in contents_raw if isinstance(c, dict)]
        if len(contents) != len(contents_raw):
            raise ValueError("contents must be objects")
        tok = d.get("tokens")
        tokens = None
        if isinstance(tok, dict):
            vals = [tok.get(k) for k in ("input", "output", "cached")]
            if not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) for v in vals):
                raise ValueError("tokens must be non-negative integers or null")
            tokens = Tokens(*vals)
        cost = d.get("cost_usd")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0):
            raise ValueError("cost_usd must be a non-negative number or null")
        started = d.get("started_at")
        started_at = _dt.datetime.fromisoformat(started) if isinstance(started, str) else None
        duration = d.get("duration_s")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))):
            raise ValueError("duration_s must be a number or null")
        finish = d.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            raise ValueError("finish_reason must be a string or null")
        model = d.get("model")
        if model is not None and not isinstance(model, str):
            raise ValueError("model must be a string or null")
        meta = {k: d[k] for k in ("cell_id", "source") if isinstance(d.get(k), str)}
        # The replay key of the request (see _spend): kept so a re-run can replay after a restore.
        rh = d.get("request_hash")
        if isinstance(rh, str) and len(rh) <= 64:
            meta["request_hash"] = rh
        # Where the turn sits in the notebook's conversation (DESIGN §10): the cell a panel
        # question follows; and a hash of the conversation above the cell, which records of an
        # earlier version hold (the replay key's history part serves now): kept as it was.
        for k in ("after_cell", "above_hash"):
            v = d.get(k)
            if isinstance(v, str) and len(v) <= 200:
                meta[k] = v
        # An exchange that starts a new conversation (``%%chat --new``): a boolean, only where true.
        if d.get(NEW_KEY) is True:
            meta[NEW_KEY] = True
        # Its parts (see _replay), kept as they were, of any version: a key this reader cannot
        # compare is still not dropped from the record it writes again.
        rk = d.get("request_key")
        if rk is not None:
            if not isinstance(rk, dict) or not _plain_json(rk, MAX_KEY_CHARS):
                raise ValueError(
                    f"request_key must be a JSON object of at most {MAX_KEY_CHARS:,} characters"
                )
            meta["request_key"] = rk
        return cls(
            role=role,
            contents=contents,
            tokens=tokens,
            cost=None if cost is None else float(cost),
            finish_reason=finish,
            partial=bool(d.get("partial", False)),
            started_at=started_at,
            duration=None if duration is None else float(duration),
            model=model,
            meta=meta,
            free=role == "assistant" and d.get("free") is True,
        )

    def __repr__(self) -> str:
        text = self.text
        short = text if len(text) <= 60 else text[:57] + "..."
        extra = " partial" if self.partial else ""
        return f"<Turn {self.role}{extra} {short!r}>"


#: The prompt's meta key (and record field, ``true`` where set) of an exchange that starts a new
#: conversation (``%%chat --new``): it is sent with no history, and the exchanges after it
#: continue from it, not from those before it (``conversation_start``).
NEW_KEY = "new_conversation"
#: What every view (``%chat_history``, an export) shows before such an exchange: the turns above
#: it are kept and shown, not sent with it or after it.
NEW_LINE = "a new conversation starts here (--new): what is above is not sent with what follows"


def starts_conversation(t: Turn) -> bool:
    """Whether ``t`` is the prompt of an exchange that starts a new conversation (``NEW_KEY``)."""
    return t.meta.get(NEW_KEY) is True and opens_exchange(t)

#: The most characters of a user turn's ``request_key`` kept from a record.
MAX_KEY_CHARS = 8_000


def _plain_json(value: Any, limit: int) -> bool:
    """``value`` is JSON (no NaN) of at most ``limit`` characters."""
    try:
        return len(json.dumps(value, allow_nan=False)) <= limit
    except (TypeError, ValueError, RecursionError):
        return False


def check_tool_pairs(turns: list[Turn]) -> None:
    """Raise ValueError unless tool requests and results pair up: an assistant turn's requests
    are answered by the next turn, a user turn, id for id (a server refuses anything else)."""
    for i, t in enumerate(turns):
        results = {r.id for r in t.tool_results}
        if results:
            prev = turns[i - 1] if i > 0 else None
            asked = {r.id for r in prev.tool_requests} if prev is not None else set()
            if t.role != "user" or results != asked or len(results) != len(t.tool_results):
                raise ValueError(
                    f"turn {i} has tool results that do not answer the tool requests of turn {i - 1}"
                )
        if t.tool_requests:
            nxt = turns[i + 1] if i + 1 < len(turns) else None
            if t.role != "assistant" or nxt is None or {r.id for r in nxt.tool_results} != {
                r.id for r in t.tool_requests
            }:
                raise ValueError(f"turn {i} asks for tools, but turn {i + 1} does not hold their results")


def tool_round(t: Turn) -> bool:
    """A user turn that carries tool results: it answers the calls of the turn before it, so it
    continues that exchange and is shown on the calls' lines, never as a question."""
    return t.role == "user" and bool(t.tool_results)


def opens_exchange(t: Turn) -> bool:
    """A user turn that asks: where an exchange begins (every view's one rule)."""
    return t.role == "user" and not t.tool_results


def record_opens_exchange(d: Mapping[str, Any]) -> bool:
    """``opens_exchange`` for a turn in the record's form (``Turn.to_dict``), not yet read."""
    contents = d.get("contents")
    return d.get("role") == "user" and not any(
        isinstance(c, Mapping) and c.get("type") == "tool_result" for c in contents or [])


def exchange_starts(turns: Sequence[Turn]) -> list[int]:
    """The indexes where exchanges begin (the first turn always does, whatever it is)."""
    return _starts(turns, opens_exchange)


def _starts(turns: Sequence[T], opens: Callable[[T], bool]) -> list[int]:
    return [i for i, t in enumerate(turns) if i == 0 or opens(t)]


def _cut(turns: Sequence[T], starts: list[int]) -> list[list[T]]:
    return [list(turns[a:b]) for a, b in zip(starts, [*starts[1:], len(turns)])]


def conversation_start(turns: Sequence[Turn], end: int) -> int:
    """Where the conversation that an exchange at ``turns[end]`` continues begins: at the last
    exchange before it that started a new one (its prompt's ``NEW_KEY``), else at 0. What comes
    before that point is kept in the history and shown, but not sent (every sender's one rule)."""
    for i in range(min(end, len(turns)) - 1, -1, -1):
        if starts_conversation(turns[i]):
            return i
    return 0


def exchange_end(turns: Sequence[Turn], start: int) -> int:
    """Index after the exchange that begins at ``turns[start]``: its tool rounds and its answer."""
    end = start + 1
    while end < len(turns) and not opens_exchange(turns[end]):
        end += 1
    return end


def exchanges(turns: Sequence[Turn]) -> list[list[Turn]]:
    """The turns cut into exchanges: a prompt, its tool rounds, the answer (every view's rule)."""
    return _cut(turns, exchange_starts(turns))


def record_exchanges(turns: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``exchanges`` of turns in the record's form (``Turn.to_dict``), by the same rule."""
    return _cut(turns, _starts(turns, record_opens_exchange))


# -- a tool call on one line (every view: the cell, the panel, %chat_history, an export, echo) ---

#: Characters of a call's arguments (as JSON), and of its error, shown on the call's line.
SHORT_ARGUMENTS = 60
SHORT_ERROR = 80


def one_line(s: str, limit: int) -> str:
    """``s`` with its whitespace runs made one space, cut to ``limit`` characters ("…" ending)."""
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def short_arguments(arguments: dict[str, Any], limit: int = SHORT_ARGUMENTS) -> str:
    """A call's arguments as JSON, cut to ``limit`` characters."""
    text = json.dumps(arguments, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def call_line(name: str, arguments: dict[str, Any], result: ContentToolResult | None) -> str:
    """A tool call on one line: name, short arguments, ok / refused / error, how long it ran."""
    if result is None:
        return f"{name}({short_arguments(arguments)}) → no result"
    state = (result.status or "ok") + (
        f" · {result.duration:.2f} s" if result.duration is not None else "")
    if result.status == "refused" and result.error is not None:
        # A refusal's reason may say how to allow the call: room for it.
        state += ": " + one_line(result.error.removeprefix("Tool call rejected.").strip(), 160)
    elif result.error is not None:
        state += ": " + one_line(result.error, SHORT_ERROR)
    return f"{name}({short_arguments(arguments)}) → {state}"
