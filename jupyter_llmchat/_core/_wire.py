"""The wire format of chat completions, both ways, with no I/O: what ``Chat`` sends and reads.

- ``_Answer``: a pure decoder, fed one SSE data field at a time (``_provider`` reads the fields
  off the stream), accumulating one answer: its text and thinking pieces, tool calls, usage,
  model and finish reason;
- ``_wire``: one turn as chat-completions messages (tool requests as ``tool_calls``, tool results
  as ``tool`` messages, images as parts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .._errors import StreamError
from ._provider import safe_url
from ._tools import MAX_TOOL_RESULT_CHARS, tool_result_text
from ._turns import ContentImage, ContentText, ContentToolRequest, Tokens, Turn

__all__ = ["_Answer", "_check_not_empty", "_content_pieces", "_wire"]

#: What ``_Answer.feed`` returns: ("text" | "thinking", the new piece).
_Piece = tuple[str, str]


class _Answer:
    """Accumulates one streamed (or whole) answer; pure, no I/O, fed one SSE data field at a time.

    A chunk that cannot be read (not JSON, or not shaped like a chat-completions chunk) is
    skipped and counted in ``skipped``: one bad line must not end an answer that goes on."""

    __slots__ = (
        "text", "thinking", "finish_reason", "usage", "model", "done", "calls", "skipped", "_redact",
        "refused",
    )

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.done = False
        # Tool calls by their stream index: id, name and the argument pieces so far.
        self.calls: dict[int, dict[str, Any]] = {}
        self.skipped = 0
        self._redact = redact or (lambda s: s)
        #: The model refused (OpenAI's ``refusal``): its words are the text.
        self.refused = False

    def feed(self, data: str) -> tuple[_Piece, ...]:
        """Decode one SSE data field; return the new thinking and text, if any, in that order."""
        if data == "[DONE]":
            self.done = True
            return ()
        if not data.strip():
            return ()  # keep-alive or an empty event: nothing to read, nothing lost
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            self.skipped += 1
            return ()
        if "error" in obj and obj["error"]:
            err = obj["error"]
            msg = err.get("message") if isinstance(err, dict) else err
            # Redact the whole text before cutting it: a cut through a key leaves a prefix.
            raise StreamError(
                f"the server reported an error mid-stream: {self._redact(str(msg))[:200]}"
            )
        if isinstance(obj.get("usage"), dict) and obj["usage"]:
            self.usage = obj["usage"]
        # The first non-empty model: Azure's prompt-filter chunk comes first with "model": "".
        if self.model is None and isinstance(obj.get("model"), str) and obj["model"]:
            self.model = obj["model"]
        choices = obj.get("choices")
        if choices is None or choices == []:
            return ()  # a usage-only chunk, or a server's empty keep-alive chunk
        choice = choices[0] if isinstance(choices, list) else None
        if not isinstance(choice, dict):
            self.skipped += 1
            return ()
        delta = choice.get("delta")
        message = choice.get("message")
        # A whole (non-streamed) completion. Perplexity's also carries an empty ``delta``, and its
        # stream chunks carry the ``message`` so far: a chunk's delta is what counts.
        whole = delta is None or (
            isinstance(message, dict) and obj.get("object") != "chat.completion.chunk"
        )
        if whole:
            delta = message if message is not None else {}
        if not isinstance(delta, dict):
            self.skipped += 1
            return ()
        if isinstance(choice.get("finish_reason"), str) and choice["finish_reason"]:
            self.finish_reason = choice["finish_reason"]
        if whole:
            self.done = True
        # One delta (and always a whole message) may carry both thinking and text.
        events: list[_Piece] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning and isinstance(reasoning, str):
            self.thinking.append(reasoning)
            events.append(("thinking", reasoning))
        content = delta.get("content")
        if isinstance(content, str):  # the hot path: one text piece per streamed chunk
            if content:
                self.text.append(content)
                events.append(("text", content))
        elif content:  # a list of typed parts (Mistral)
            for kind, piece in _content_pieces(content):
                (self.thinking if kind == "thinking" else self.text).append(piece)
                events.append((kind, piece))
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):  # OpenAI: content null, the words here
            self.refused = True
            self.text.append(refusal)
            events.append(("text", refusal))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            self._feed_calls(calls)
        return tuple(events)

    def _feed_calls(self, calls: list[Any]) -> None:
        """Assemble streamed tool calls: a call's id and name come first, its arguments in
        pieces over many chunks; several calls are told apart by ``index``."""
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            index = call.get("index")
            if not isinstance(index, int):  # a whole message lists its calls without indexes
                index = position if self.done else max(self.calls, default=-1) + (0 if call.get("id") is None else 1)
            entry = self.calls.setdefault(index, {"id": None, "name": "", "arguments": []})
            if isinstance(call.get("id"), str) and call["id"]:
                entry["id"] = call["id"]
            fn = call.get("function")
            if not isinstance(fn, dict):
                continue
            if isinstance(fn.get("name"), str) and fn["name"] and not entry["name"]:
                entry["name"] = fn["name"]
            args = fn.get("arguments")
            if isinstance(args, str):
                entry["arguments"].append(args)
            elif isinstance(args, dict):  # some servers send the object itself
                entry["arguments"].append(json.dumps(args))

    def tool_requests(self) -> tuple[list[ContentToolRequest], dict[str, str]]:
        """The calls of this answer, in order; and the raw arguments of those that are not a
        JSON object, by call id (they get an error result instead of running)."""
        requests: list[ContentToolRequest] = []
        bad: dict[str, str] = {}
        for index in sorted(self.calls):
            entry = self.calls[index]
            call_id = entry["id"] or f"call_{os.urandom(12).hex()}"  # a server that sent no id
            raw = "".join(entry["arguments"]).strip()
            try:
                args = json.loads(raw) if raw else {}
            except ValueError:
                args = None
            if not isinstance(args, dict):
                bad[call_id] = raw
                args = {}
            requests.append(ContentToolRequest(call_id, entry["name"], args))
        return requests, bad

    @property
    def complete(self) -> bool:
        return self.done or self.finish_reason is not None

    @property
    def has_content(self) -> bool:
        return bool(self.text or self.thinking)

    @property
    def empty(self) -> bool:
        """Nothing at all came: no text, thinking, tool call or usage (what LiteLLM's proxy sends
        for an upstream that failed), unlike an empty answer the server counted."""
        return not (self.text or self.thinking or self.calls or self.usage)

    def tokens(self) -> Tokens:
        u = self.usage
        if not isinstance(u, dict):
            return Tokens()
        details = u.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Tokens(_int(u.get("prompt_tokens")), _int(u.get("completion_tokens")), _int(cached))


def _content_pieces(content: Any) -> list[_Piece]:
    """``content`` as ("text" | "thinking", piece) pairs: a str, or a list of typed parts
    (Mistral's magistral: ``{"type": "text", "text"}`` and ``{"type": "thinking", "thinking":
    [parts]}``)."""
    if isinstance(content, str):
        return [("text", content)] if content else []
    if not isinstance(content, list):
        return []
    out: list[_Piece] = []
    for part in content:
        if isinstance(part, str):
            out.extend(_content_pieces(part))
        elif not isinstance(part, dict):
            continue
        elif part.get("type") == "text" and isinstance(part.get("text"), str) and part["text"]:
            out.append(("text", part["text"]))
        elif part.get("type") == "thinking":
            inner = part.get("thinking")
            inner_parts = _content_pieces(inner if isinstance(inner, list) else [inner])
            out.extend(("thinking", p) for _, p in inner_parts)
    return out


def _check_not_empty(answer: _Answer, url: str) -> None:
    """An answer with nothing in it, not even usage, is a failure, not an empty reply: say so
    (recording nothing: the exchange then leaves no user turn behind)."""
    if answer.empty:
        raise StreamError(
            f"the server sent an empty answer: no content and no usage (POST {safe_url(url)})",
            hint="the server, or a proxy in front of it, may have failed upstream: see its logs",
        )


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


#: Sent instead of an image whose bytes the notebook's record did not keep (``_metadata``).
_OMITTED_IMAGE = "[an image was here; it was not kept in the notebook's record]"


def _wire(t: Turn, max_result_chars: int | None = MAX_TOOL_RESULT_CHARS) -> list[dict[str, Any]]:
    """One turn as chat-completions messages; thinking is not sent back.

    An assistant turn's tool requests become its ``tool_calls``; a user turn's tool results
    become one ``tool`` message each, capped at ``max_result_chars`` (then its other contents,
    if any, as a user message)."""
    if t.role == "assistant":
        msg: dict[str, Any] = {"role": "assistant", "content": t.text}
        requests = t.tool_requests
        if requests:
            msg["content"] = t.text or None
            msg["tool_calls"] = [
                {"id": r.id, "type": "function",
                 "function": {"name": r.name, "arguments": json.dumps(r.arguments, ensure_ascii=False)}}
                for r in requests
            ]
        return [msg]
    out: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": r.id, "content": tool_result_text(r, max_result_chars)}
        for r in t.tool_results
    ]
    rest = [c for c in t.contents if isinstance(c, (ContentText, ContentImage))]
    if out and not rest:
        return out
    if t.role == "user" and any(isinstance(c, ContentImage) for c in rest):
        parts: list[dict[str, Any]] = []
        for c in rest:
            if isinstance(c, ContentText):
                parts.append({"type": "text", "text": c.text})
            elif c.url.startswith("omitted:"):
                parts.append({"type": "text", "text": _OMITTED_IMAGE})
            else:
                parts.append({"type": "image_url", "image_url": {"url": c.url}})
        return [*out, {"role": "user", "content": parts}]
    return [*out, {"role": t.role, "content": t.text}]

