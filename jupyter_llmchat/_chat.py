"""``Chat``: a conversation with one provider, as in ellmer's ``Chat`` object.

History is only changed when a request has produced something: a finished answer records the
user turn and the assistant turn together; an answer cut short (Ctrl-C, task cancel, a stop
from the panel, a broken stream) records the text so far as an assistant turn with
``partial=True``; a request that fails before any text records nothing.
"""

from __future__ import annotations

import copy as _copy
import datetime as _dt
import json
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from contextlib import aclosing, closing
from typing import Any, Literal

from ._errors import ConfigurationError, StreamError
from ._provider import OpenAICompatible, safe_url
from ._turns import Content, ContentImage, ContentText, ContentThinking, Tokens, Turn
from ._usage import cost_of, record_usage, warm_up_prices

__all__ = ["Chat", "Echo", "StreamEvent"]

Echo = Literal["none", "output", "all"]
_ECHOES = ("none", "output", "all")

#: What ``Chat._events`` yields: ("text" | "thinking", the new piece).
StreamEvent = tuple[str, str]

#: Called on every change: (chat, what happened). "start": an answer begins streaming;
#: "turn": an exchange was recorded; "abort": an answer failed with nothing to keep;
#: "reset" and "set": history or system prompt replaced.
Listener = Callable[["Chat", str], None]


def _check_echo(echo: str | None, default: Echo) -> Echo:
    if echo is None:
        return default
    if echo not in _ECHOES:
        raise ConfigurationError(f"echo={echo!r} is not one of {', '.join(_ECHOES)}")
    return echo  # type: ignore[return-value]


class _Answer:
    """Accumulates one streamed (or whole) answer; pure, no I/O, fed one SSE data field at a time."""

    __slots__ = ("text", "thinking", "finish_reason", "usage", "model", "done")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.done = False

    def feed(self, data: str) -> tuple[StreamEvent, ...]:
        """Decode one SSE data field; return the new thinking and text, if any, in that order."""
        if data == "[DONE]":
            self.done = True
            return ()
        try:
            obj = json.loads(data)
        except ValueError:
            raise StreamError(f"malformed chunk in the answer's stream: {data[:80]!r}") from None
        if not isinstance(obj, dict):
            raise StreamError(f"malformed chunk in the answer's stream: {data[:80]!r}")
        if "error" in obj and obj["error"]:
            err = obj["error"]
            msg = err.get("message") if isinstance(err, dict) else err
            raise StreamError(f"the server reported an error mid-stream: {str(msg)[:200]}")
        if obj.get("usage"):
            self.usage = obj["usage"]
        if self.model is None and isinstance(obj.get("model"), str):
            self.model = obj["model"]
        choices = obj.get("choices")
        if not choices:
            return ()
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if delta is None:  # a whole (non-streamed) completion
            delta = choice.get("message") or {}
            self.done = True
        # One delta (and always a whole message) may carry both thinking and text.
        events: list[StreamEvent] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning and isinstance(reasoning, str):
            self.thinking.append(reasoning)
            events.append(("thinking", reasoning))
        content = delta.get("content")
        if content and isinstance(content, str):
            self.text.append(content)
            events.append(("text", content))
        return tuple(events)

    @property
    def complete(self) -> bool:
        return self.done or self.finish_reason is not None

    @property
    def has_content(self) -> bool:
        return bool(self.text or self.thinking)

    def tokens(self) -> Tokens:
        u = self.usage
        if not isinstance(u, dict):
            return Tokens()
        details = u.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return Tokens(_int(u.get("prompt_tokens")), _int(u.get("completion_tokens")), _int(cached))


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


class Chat:
    """A conversation: the provider, the system prompt and the turns so far.

    Create one with ``chat_openai_compatible()`` or a preset such as ``chat_ollama()``.
    """

    def __init__(
        self,
        provider: OpenAICompatible,
        *,
        system_prompt: str | None = None,
        echo: Echo = "none",
        turns: Sequence[Turn] = (),
    ) -> None:
        self.provider = provider
        self._system_prompt = system_prompt
        self._echo: Echo = _check_echo(echo, "none")
        self._turns: list[Turn] = []
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        if turns:
            self.set_turns(turns)

    # -- ellmer's accessors -------------------------------------------------------------------

    @property
    def system_prompt(self) -> str | None:
        return self._system_prompt

    @system_prompt.setter
    def system_prompt(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise ConfigurationError("system_prompt must be a str or None")
        self._system_prompt = value or None
        self._notify("set")

    def get_model(self) -> str:
        """The model's name; asks the server's /models once if none was given."""
        return self.provider.resolve_model()

    def get_turns(self, include_system_prompt: bool = False) -> list[Turn]:
        turns = list(self._turns)
        if include_system_prompt and self._system_prompt:
            turns.insert(0, Turn("system", [ContentText(self._system_prompt)]))
        return turns

    def set_turns(self, turns: Sequence[Turn]) -> None:
        """Replace the history. A leading system turn sets the system prompt."""
        new = list(turns)
        if new and new[0].role == "system":
            self._system_prompt = new.pop(0).text or None
        for i, t in enumerate(new):
            if not isinstance(t, Turn):
                raise ConfigurationError(f"turn {i} is a {type(t).__name__}, not a Turn")
            expected = "user" if i % 2 == 0 else "assistant"
            if t.role != expected:
                raise ConfigurationError(
                    f"turn {i} has role {t.role!r}; turns must alternate user, assistant, ..."
                )
        with self._guard():
            self._turns = new
        self._notify("set")

    def last_turn(self, role: Literal["user", "assistant", "system"] = "assistant") -> Turn | None:
        for t in reversed(self.get_turns(include_system_prompt=True)):
            if t.role == role:
                return t
        return None

    def get_tokens(self) -> list[dict[str, Any]]:
        """One row per assistant turn: its input, output and cached tokens and cost (None = unknown)."""
        rows = []
        for i, t in enumerate(self._turns):
            if t.role != "assistant":
                continue
            tok = t.tokens or Tokens()
            rows.append(
                {"turn": i, "model": t.model, "input": tok.input, "output": tok.output,
                 "cached": tok.cached, "cost": t.cost, "partial": t.partial}
            )
        return rows

    def get_cost(self, include: Literal["all", "last"] = "all") -> float | None:
        """Cost in USD of all answers (or the last); None if any of them is unknown."""
        if include not in ("all", "last"):
            raise ConfigurationError('include must be "all" or "last"')
        answers = [t for t in self._turns if t.role == "assistant"]
        if include == "last":
            answers = answers[-1:]
        if any(t.cost is None for t in answers):
            return None
        return float(sum(t.cost for t in answers if t.cost is not None))

    # -- sending ------------------------------------------------------------------------------

    def chat(self, *args: str | Content, echo: Echo | None = None, **kwargs: Any) -> str:
        """Send a message, wait for the whole answer, return its text."""
        mode = _start_echo(args, echo, self._echo)
        out = []
        # Without echo nothing is shown while it arrives: ask for the whole answer at once, which
        # also gets token usage from servers that send none while streaming (llama.cpp's).
        kwargs.setdefault("stream", mode != "none")
        for kind, piece in self._events(args, **kwargs):
            if kind == "text":
                out.append(piece)
                if mode != "none":
                    _write(piece)
        if mode != "none":
            _write("\n")
        return "".join(out)

    def stream(
        self, *args: str | Content, echo: Echo | None = None, **kwargs: Any
    ) -> Generator[str, None, None]:
        """Send a message and yield the answer's text as it arrives.

        Stopping early (``break``, ``close()``) keeps the text so far as a partial answer."""
        mode = _start_echo(args, echo, "none")
        # Closing this generator early (break, close()) closes the exchange at once: the partial
        # answer is recorded and the chat freed now, not whenever the inner one is collected.
        with closing(self._events(args, **kwargs)) as events:
            for kind, piece in events:
                if kind == "text":
                    if mode != "none":
                        _write(piece)
                    yield piece

    async def chat_async(self, *args: str | Content, echo: Echo | None = None, **kwargs: Any) -> str:
        mode = _start_echo(args, echo, self._echo)
        out = []
        kwargs.setdefault("stream", mode != "none")  # as in chat()
        async for kind, piece in self._aevents(args, **kwargs):
            if kind == "text":
                out.append(piece)
                if mode != "none":
                    _write(piece)
        if mode != "none":
            _write("\n")
        return "".join(out)

    async def stream_async(
        self, *args: str | Content, echo: Echo | None = None, **kwargs: Any
    ) -> AsyncGenerator[str, None]:
        mode = _start_echo(args, echo, "none")
        # As in stream(); an async generator is only closed by aclose() (or, after a plain
        # ``break``, by the event loop a moment later), so pass that close on to the exchange.
        async with aclosing(self._aevents(args, **kwargs)) as events:
            async for kind, piece in events:
                if kind == "text":
                    if mode != "none":
                        _write(piece)
                    yield piece

    # -- the turn machinery shared by the four methods above ------------------------------------

    def _prepare(
        self,
        args: Sequence[str | Content],
        model: str | None = None,
        params: dict[str, Any] | None = None,
        history: bool = True,
        meta: dict[str, Any] | None = None,
        stream: bool = True,
        replace_from: int | None = None,
    ) -> tuple[Turn, dict[str, Any]]:
        """Build the user turn and the request body.

        ``history=False`` sends the prompt alone and records nothing; ``replace_from=i`` sends
        only the turns before ``i`` and, once the answer is in, drops the turns from ``i`` on
        (a notebook cell run again replaces its earlier exchange).
        """
        contents = _contents(args)
        user = Turn("user", contents, started_at=_now(), meta=dict(meta or {}))
        resolved = model or self.provider.resolve_model()
        if self.provider.priced:
            warm_up_prices()
        past = self._turns[:replace_from] if history else []
        messages = self._messages([*past, user])
        body = self.provider.body(messages, model=resolved, stream=stream, params=params)
        # The bundled model leaves the oldest turns out rather than overflow its context.
        note = self.provider.fit_context(body)
        if note:
            user.meta["context_note"] = note
        user.model = resolved
        return user, body

    def _events(
        self, args: Sequence[str | Content], **kwargs: Any
    ) -> Generator[StreamEvent, None, None]:
        """Stream one exchange; yields ("text"|"thinking", piece) and records the turns."""
        with self._guard():
            user, body = self._prepare(args, **kwargs)
            self._notify("start")
            answer = _Answer()
            t0 = time.perf_counter()
            try:
                with self.provider.stream(body) as chunks:
                    for data in chunks:
                        yield from answer.feed(data)
                self._check_complete(answer)
            except BaseException as exc:  # KeyboardInterrupt and GeneratorExit included
                self._record(user, answer, t0, kwargs, partial=True, exc=exc)
                raise
            self._record(user, answer, t0, kwargs, partial=False)

    async def _aevents(
        self, args: Sequence[str | Content], **kwargs: Any
    ) -> AsyncGenerator[StreamEvent, None]:
        with self._guard():
            user, body = self._prepare(args, **kwargs)
            self._notify("start")
            answer = _Answer()
            t0 = time.perf_counter()
            try:
                async with self.provider.astream(body) as chunks:
                    async for data in chunks:
                        for event in answer.feed(data):
                            yield event
                self._check_complete(answer)
            except BaseException as exc:  # CancelledError and GeneratorExit included
                self._record(user, answer, t0, kwargs, partial=True, exc=exc)
                raise
            self._record(user, answer, t0, kwargs, partial=False)

    def _check_complete(self, answer: _Answer) -> None:
        if not answer.complete:
            raise StreamError(
                f"the answer's stream from {self.provider.display_url} ended before it was complete"
            )

    def _record(
        self,
        user: Turn,
        answer: _Answer,
        t0: float,
        kwargs: dict[str, Any],
        *,
        partial: bool,
        exc: BaseException | None = None,
    ) -> None:
        if partial and not answer.has_content:
            self._notify("abort")
            return  # nothing arrived: leave history as it was
        contents: list[Content] = []
        if answer.thinking:
            contents.append(ContentThinking("".join(answer.thinking)))
        contents.append(ContentText("".join(answer.text)))
        model = answer.model or user.model or self.provider.model or "unknown"
        tokens = answer.tokens()
        cost = cost_of(self.provider.price_provider, model, tokens)
        finish = answer.finish_reason
        if partial and finish is None:
            finish = "interrupted" if isinstance(exc, (KeyboardInterrupt, GeneratorExit)) or _is_cancel(exc) else "error"
        reply = Turn(
            "assistant",
            contents,
            tokens=tokens,
            cost=cost,
            finish_reason=finish,
            partial=partial,
            started_at=user.started_at,
            duration=time.perf_counter() - t0,
            model=model,
            meta={k: v for k, v in user.meta.items() if k in ("cell_id", "source")},
        )
        record_usage(self.provider.name, model, tokens, cost)
        if kwargs.get("history", True):
            if kwargs.get("replace_from") is not None:
                del self._turns[kwargs["replace_from"]:]
            self._turns.extend((user, reply))
        self.last_exchange = (user, reply)
        self._notify("turn")

    def _messages(self, turns: Sequence[Turn]) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self._system_prompt:
            msgs.append({"role": "system", "content": self._system_prompt})
        for t in turns:
            msgs.append(_message(t))
        return msgs

    # -- locking and listeners ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while an answer is streaming."""
        return self._lock.locked()

    def _guard(self) -> _Guard:
        return _Guard(self)

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(chat, event)`` after every change of history (used by the Jupyter layer)."""
        if fn not in self._listeners:
            self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _notify(self, event: str) -> None:
        for fn in list(self._listeners):
            try:
                fn(self, event)
            except Exception as exc:  # a broken listener must not break the conversation
                print(f"jupyter_llmchat: listener failed: {exc!r}", file=sys.stderr)

    def reset(self) -> None:
        """Forget every turn (the system prompt stays)."""
        with self._guard():
            self._turns = []
        self._notify("reset")

    # -- persistence --------------------------------------------------------------------------

    def to_json(self) -> str:
        """The conversation as JSON: provider name, URL, model, params, system prompt and turns.

        Never a credential, header or ``api_args`` (which may carry secrets)."""
        return json.dumps(self._state(), ensure_ascii=False)

    def _state(self) -> dict[str, Any]:
        p = self.provider
        return {
            "version": 1,
            "provider": {"name": p.name, "base_url": safe_url(p.base_url), "model": p.model},
            "params": p.params,
            "system_prompt": self._system_prompt,
            "turns": [t.to_dict() for t in self._turns],
        }

    @classmethod
    def from_json(cls, data: str | dict[str, Any], **kwargs: Any) -> Chat:
        """Rebuild a Chat from ``to_json()``; pass ``credentials=``, ``api_headers=`` etc. again."""
        from ._presets import chat_openai_compatible

        state = json.loads(data) if isinstance(data, str) else data
        prov = state.get("provider") or {}
        kwargs.setdefault("base_url", prov.get("base_url"))
        kwargs.setdefault("name", prov.get("name") or "OpenAI-compatible")
        kwargs.setdefault("model", prov.get("model"))
        kwargs.setdefault("params", state.get("params"))
        kwargs.setdefault("system_prompt", state.get("system_prompt"))
        chat = chat_openai_compatible(**kwargs)
        chat.set_turns([Turn.from_dict(t) for t in state.get("turns", [])])
        return chat

    def copy(self) -> Chat:
        """An independent copy: same settings, its own history and HTTP connections."""
        prov = _copy.copy(self.provider)
        prov._client = None
        prov._aclient = None
        prov.params = _copy.deepcopy(self.provider.params)
        prov.api_args = _copy.deepcopy(self.provider.api_args)
        prov.api_headers = dict(self.provider.api_headers)
        # Turns are mutable (the Jupyter layer annotates ``meta``): the copy gets its own.
        turns = _copy.deepcopy(self._turns)
        return Chat(prov, system_prompt=self._system_prompt, echo=self._echo, turns=turns)

    def __repr__(self) -> str:
        p = self.provider
        n = len(self._turns)
        cost = self.get_cost()
        cost_s = "n/a" if cost is None else f"${cost:.4f}"
        return (
            f"<Chat {p.name} model={p.model or '(auto)'} url={p.display_url} "
            f"turns={n} cost={cost_s}>"
        )


class _Guard:
    """Holds a Chat's lock for one exchange; a second sender is refused, never interleaved."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    def __enter__(self) -> None:
        if not self.chat._lock.acquire(blocking=False):
            raise ChatBusyError(
                "this chat is busy answering another message",
                hint="wait for it to finish, or stop it",
            )

    def __exit__(self, *exc: object) -> None:
        self.chat._lock.release()


class ChatBusyError(ConfigurationError):
    """Raised when a second message is sent while an answer is still streaming."""


def _is_cancel(exc: BaseException | None) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _write(s: str) -> None:
    sys.stdout.write(s)
    sys.stdout.flush()


def _contents(args: Sequence[str | Content]) -> list[Content]:
    if not args:
        raise ConfigurationError("nothing to send: give a prompt")
    out: list[Content] = []
    for a in args:
        if isinstance(a, str):
            out.append(ContentText(a))
        elif isinstance(a, (ContentText, ContentImage)):
            out.append(a)
        else:
            raise ConfigurationError(f"cannot send a {type(a).__name__}; give str or content objects")
    if not any((isinstance(c, ContentText) and c.text.strip()) or isinstance(c, ContentImage) for c in out):
        raise ConfigurationError("the prompt is empty")
    return out


def _start_echo(args: Sequence[str | Content], echo: str | None, default: Echo) -> Echo:
    """The echo mode in force; with "all", the prompt is printed first."""
    mode = _check_echo(echo, default)
    if mode == "all":
        _write("> " + " ".join(a if isinstance(a, str) else f"[{a.type}]" for a in args) + "\n")
    return mode


def _message(t: Turn) -> dict[str, Any]:
    """One turn as a chat-completions message; thinking is not sent back."""
    if t.role == "user" and any(isinstance(c, ContentImage) for c in t.contents):
        parts: list[dict[str, Any]] = []
        for c in t.contents:
            if isinstance(c, ContentText):
                parts.append({"type": "text", "text": c.text})
            elif isinstance(c, ContentImage):
                parts.append({"type": "image_url", "image_url": {"url": c.url}})
        return {"role": "user", "content": parts}
    return {"role": t.role, "content": t.text}

