"""Streaming an answer into one cell output.

One display per answer (``display_id``), updated at most ``rate_hz`` times a second and less
often as the text grows: after an update of ``n`` characters the next one waits at least
``n / BYTES_PER_SECOND`` seconds. Intermediate updates therefore total at most
``BYTES_PER_SECOND`` per second of streaming plus the last update, so bytes stay linear in the
answer whatever its length, and the message rate never exceeds ``rate_hz``.
The final update is the full bundle (text/markdown + text/plain) with the turn's metadata.
"""

from __future__ import annotations

import contextvars
import html
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .._core._markdown import safe_markdown
from .._core._turns import short_arguments

__all__ = [
    "BYTES_PER_SECOND", "AnswerDisplay", "StreamDisplay", "TerminalDisplay", "error_bundle",
    "formatwarning_hook", "kernel_display", "show_line", "tool_line", "tool_state",
]

#: Budget for intermediate updates (characters re-sent per second of streaming).
BYTES_PER_SECOND = 16_000


class AnswerDisplay(Protocol):
    """Where one answer shows as it streams: a notebook output (``StreamDisplay``) or a
    terminal (``TerminalDisplay``). The cell runner talks to this and nothing else."""

    @property
    def text(self) -> str:
        """The answer's text so far (the last round's, after tool calls)."""
        ...

    def status(self, line: str) -> None: ...

    def delta(self, kind: str, piece: str) -> None: ...

    def fill(self, kind: str, piece: str) -> None: ...

    def tool_request(
        self, call_id: str, name: str, arguments: dict[str, Any], *, replayed: bool = False
    ) -> None: ...

    def tool_result(self, call_id: str, value: Any, error: str | None, *, status: str | None = None,
                    duration: float | None = None, replayed: bool = False) -> None: ...

    def final(self, fmt: str, metadata: dict[str, Any], note: str | None = None) -> None: ...

    def error(self, message: str, hint: str = "") -> None: ...


class StreamDisplay:
    """One answer's output in a notebook: status line, throttled updates, final bundle."""

    def __init__(
        self,
        rate_hz: float = 10.0,
        *,
        display: Callable[..., Any] | None = None,
        update: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if display is None or update is None:
            from IPython.display import display as _display
            from IPython.display import update_display as _update

            display, update = display or _display, update or _update
        self._display = display
        self._update = update
        self._clock = clock
        self._min_interval = 1.0 / max(0.1, float(rate_hz))
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._chars = 0
        self._next = 0.0
        self._last_sent: float | None = None
        self.display_id: str | None = None
        # Text that arrived too soon after an update goes out on a timer, so the output catches
        # up when the stream pauses. The timer thread runs in this cell's context (ipykernel
        # finds the cell's parent message there) and shares the display under this lock.
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._unsent = False
        self._closed = False
        # Tool rounds: what came before the current round's text (earlier text, one line per
        # call) as safe Markdown, and the calls under way: id -> [name, arguments, started, done].
        self._before: list[str] = []
        self._calls: dict[str, list[Any]] = {}
        self._last_result = 0.0

    def status(self, line: str) -> None:
        """Show (or replace) a one-line status, e.g. "starting local model..."."""
        bundle = {"text/markdown": f"*{_md_escape(line)}*", "text/plain": line}
        with self._lock:
            self._show(bundle, {})

    def _show(self, bundle: dict[str, str], metadata: dict[str, Any]) -> None:
        self._last_sent = now = self._clock()
        # Whatever was sent last (status line included), the next update keeps the rate.
        self._next = max(self._next, now + self._min_interval)
        if self.display_id is None:
            handle = self._display(bundle, raw=True, metadata=metadata, display_id=True)
            self.display_id = getattr(handle, "display_id", None) or str(id(self))
        else:
            self._update(bundle, raw=True, metadata=metadata, display_id=self.display_id)

    def delta(self, kind: str, piece: str) -> None:
        """Add streamed text ("text" or "thinking"); maybe send an update. The hot path."""
        with self._lock:
            if kind == "text":
                self._text.append(piece)
            else:
                self._thinking.append(piece)
            self._chars += len(piece)
            self._flush_or_schedule()

    def fill(self, kind: str, piece: str) -> None:
        """Add text without sending an update: a replayed answer is shown whole by ``final``."""
        (self._text if kind == "text" else self._thinking).append(piece)
        self._chars += len(piece)

    def tool_request(
        self, call_id: str, name: str, arguments: dict[str, Any], *, replayed: bool = False
    ) -> None:
        """The model asked for a call: one line for it, under way until its result.
        ``replayed``: no update now (a replayed answer is shown whole by ``final``)."""
        with self._lock:
            if not self._calls:
                # A new round: the text so far was the model's words before it asked; the
                # answer (``text``, what -o and the record get) is the last round's alone.
                self._before.append(self._round_markdown())
                self._text, self._thinking = [], []
            self._calls[call_id] = [name, arguments, self._clock(), None]
            if not replayed:
                self._update_now()

    def tool_result(self, call_id: str, value: Any, error: str | None, *, status: str | None = None,
                    duration: float | None = None, replayed: bool = False) -> None:
        """A call's result: its line says ok, refused or error and how long it ran (the
        result's own ``duration``, or the time since its request: an older record's);
        ``replayed``: the recorded result, and the line says the tool was not run again."""
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                return
            now = self._clock()
            if replayed:
                duration = None  # it did not run now
            elif duration is None and status != "refused":
                # Calls of one round run one after another (sync) or together (async): counted
                # from its request or the previous result, whichever came later.
                duration = now - max(call[2], self._last_result)
            call[3] = (value, error, duration, status, replayed)
            self._last_result = now
            if all(c[3] is not None for c in self._calls.values()):
                self._before.append("".join(self._call_markdown(c) for c in self._calls.values()))
                self._calls = {}
            if not replayed:
                self._update_now()

    def _update_now(self) -> None:
        # A tool line is a rare event: shown at the rate's next slot, like a text piece.
        self._chars += 1
        self._flush_or_schedule()

    def _flush_or_schedule(self) -> None:
        """Send an update if the rate allows one now, else once it does (lock held)."""
        now = self._clock()
        if now >= self._next:
            self._flush(now)
        else:
            self._unsent = True
            self._schedule(self._next - now)

    def _call_markdown(self, call: list[Any]) -> str:
        name, arguments, _, done = call
        value, error, seconds, status, replayed = (
            done if done is not None else (None, None, None, None, False))
        # Still under way once the display is closed: the run stopped while it ran (Ctrl-C).
        stopped = done is None and self._closed
        return tool_line(name, arguments, value, error, seconds, status=status, done=done is not None,
                         interrupted=stopped, replayed=replayed) + "\n\n"

    def _flush(self, now: float) -> None:
        md = self.markdown(partial_cursor=True)
        self._show({"text/markdown": md}, {})
        self._unsent = False
        # Counted from after the send, with a little room: a timer and the stream both send,
        # and neither may make a second hold more than rate_hz messages.
        self._next = self._clock() + max(self._min_interval * 1.02, len(md) / BYTES_PER_SECOND)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None or self._closed:
            return
        context = contextvars.copy_context()
        self._timer = threading.Timer(max(0.0, delay), lambda: context.run(self._on_timer))
        self._timer.daemon = True
        self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed or not self._unsent:
                return
            now = self._clock()
            if now >= self._next:
                self._flush(now)
            else:  # an update went out meanwhile: wait for the rate again
                self._schedule(self._next - now)

    def _close(self) -> None:
        """No more intermediate updates (the final one or an error is next)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _keep_rate(self) -> None:
        """Before the final update: wait out the rest of 1/rate since the last message
        (at most a second), so no second of streaming carries more than rate_hz messages."""
        if self._last_sent is None:
            return
        wait = self._min_interval - (self._clock() - self._last_sent)
        if wait > 0:
            time.sleep(min(wait, 1.0))

    @property
    def text(self) -> str:
        return "".join(self._text)

    def markdown(self, partial_cursor: bool = False) -> str:
        parts = list(self._before)
        parts.extend(self._call_markdown(c) for c in self._calls.values())
        parts.append(self._round_markdown())
        if partial_cursor:
            parts.append(" ▍")
        return "".join(parts)

    def _round_markdown(self) -> str:
        parts = []
        thinking = "".join(self._thinking)
        if thinking:
            parts.append(
                "<details><summary>Thinking</summary>\n\n" + safe_markdown(thinking) + "\n\n</details>\n\n"
            )
        # Model text: JupyterLab renders a fresh output as trusted, so it must be safe already.
        text = self.text
        if text:
            parts.append(safe_markdown(text) + ("\n\n" if self._calls else ""))
        return "".join(parts)

    def final(
        self,
        fmt: str,
        metadata: dict[str, Any],
        note: str | None = None,
    ) -> None:
        """The last update: the whole answer, as Markdown and plain text, with the turn's metadata."""
        self._close()
        text = self.text
        md = self.markdown()
        self._keep_rate()
        if note:
            md += f"\n\n*{_md_escape(note)}*"
        if fmt == "text":
            bundle = {"text/plain": text}
        else:
            bundle = {"text/markdown": md, "text/plain": text}
        self._show(bundle, metadata)
        if note and fmt == "text":
            # text/plain stays the answer alone (it is what `consolidate` reads back).
            self._display({"text/plain": f"[{note}]"}, raw=True)

    def error(self, message: str, hint: str = "") -> None:
        """A short red message: in place of the status line, or below the text that arrived."""
        self._close()
        bundle = error_bundle(message, hint)
        if self._chars or self.display_id is None:
            self._display(bundle, raw=True)
        else:
            self._show(bundle, {})


def error_bundle(message: str, hint: str = "") -> dict[str, str]:
    line = message + (f" ({hint})" if hint else "")
    red = (
        '<div class="jupyter-llmchat-error" style="color: var(--jp-error-color1, #c62828);">'
        f"<b>chat error:</b> {html.escape(line)}</div>"
    )
    return {"text/html": red, "text/plain": f"chat error: {line}"}


class TerminalDisplay:
    """Plain streamed text for terminal IPython (no rich display there)."""

    def __init__(self) -> None:
        self._text: list[str] = []

    def status(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def delta(self, kind: str, piece: str) -> None:
        if kind == "text":
            self._text.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()

    def fill(self, kind: str, piece: str) -> None:
        self.delta(kind, piece)

    def tool_request(
        self, call_id: str, name: str, arguments: dict[str, Any], *, replayed: bool = False
    ) -> None:
        self._text = []  # as in StreamDisplay: the answer is the last round's text
        sys.stdout.write(f"\n[tool call] {name}({short_arguments(arguments)})\n")

    def tool_result(self, call_id: str, value: Any, error: str | None, *, status: str | None = None,
                    duration: float | None = None, replayed: bool = False) -> None:
        state = tool_state(error, status, None if replayed else duration)
        if replayed:
            state += ", recorded: not run again"
        sys.stdout.write(f"[tool {state}]\n" if status != "refused" else f"[tool {state}] {error}\n")

    @property
    def text(self) -> str:
        return "".join(self._text)

    def final(self, fmt: str, metadata: dict[str, Any], note: str | None = None) -> None:
        sys.stdout.write("\n" + (f"[{note}]\n" if note else ""))
        sys.stdout.flush()

    def error(self, message: str, hint: str = "") -> None:
        sys.stdout.write("\n")
        sys.stderr.write(f"chat error: {message}" + (f" ({hint})" if hint else "") + "\n")


def _md_escape(s: str) -> str:
    out = []
    for ch in s:
        if ch in "\\`*_{}[]<>()#+-.!|":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def result_text(value: Any, error: str | None) -> str:
    """A call's result (or error) as text to show."""
    if error is not None:
        return error
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def _fenced(text: str, info: str = "") -> str:
    """``text`` in a code fence longer than any backtick run in it, so it cannot close it."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


#: Characters of a tool's result shown under its line (the rest is said, not shown).
MAX_SHOWN_RESULT = 8_000


def tool_state(error: str | None, status: str | None, seconds: float | None) -> str:
    """A finished call's state, as every view shows it: "ok · 0.12 s", "refused", "error · ..."."""
    state = status or ("ok" if error is None else "error")
    return state if seconds is None else f"{state} · {seconds:.2f} s"


def tool_line(name: str, arguments: dict[str, Any], value: Any, error: str | None,
              seconds: float | None, *, status: str | None = None, done: bool | None = None,
              interrupted: bool = False, replayed: bool = False) -> str:
    """One tool call as a compact line (name, short arguments, ok / refused / error, time) that
    opens on the full arguments and result. Everything in it comes from the model or the tool:
    the line is HTML-escaped, the details go through ``safe_markdown`` (DESIGN §9).
    ``done``: it has its result (default: when ``seconds`` is known; a refused call has none).
    ``interrupted``: the call never finished (the output is final: it must not say running).
    ``replayed``: the recorded call of a replayed answer: the tool was not run again."""
    done = (replayed or seconds is not None or status is not None) if done is None else done
    if interrupted:
        state = "interrupted"
    elif not done:
        state = "running…"
    else:
        state = tool_state(error, status, None if replayed else seconds)
        if status == "refused" and error:
            # Why, on the line itself: it may say how to allow the call.
            why = " ".join(error.removeprefix("Tool call rejected.").split())
            state += f": {why[:157] + '…' if len(why) > 160 else why}"
        if replayed:
            state += " · recorded, not run again"
    summary = (f"🔧 <code>{html.escape(name)}</code>({html.escape(short_arguments(arguments))})"
               f" — {html.escape(state)}")
    body = "Arguments:\n\n" + _fenced(json.dumps(arguments, ensure_ascii=False, indent=2), "json")
    if done:
        result = result_text(value, error)
        if len(result) > MAX_SHOWN_RESULT:
            # The output is saved with the notebook: a large result is shown (and kept) cut.
            result = result[:MAX_SHOWN_RESULT] + f"\n… ({len(result):,} characters in all)"
        body += f"\n\n{'Error' if error is not None else 'Result'}:\n\n" + _fenced(result)
    return f"<details><summary>{summary}</summary>\n\n{safe_markdown(body)}\n\n</details>"


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
FormatWarning = Callable[..., str]


def formatwarning_hook(original: FormatWarning) -> FormatWarning:
    """A ``warnings.formatwarning`` that shows the package's own warnings as one clean line.

    The default names the file and line that warned (``.../jupyter_llmchat/_bridge.py:290:
    UserWarning: ...``) and quotes its source: in a cell, that is noise about our internals.
    Other warnings are formatted by ``original``. Only the text changes: filters still decide
    what is shown, and ``catch_warnings(record=True)`` still records (it never formats)."""
    if getattr(original, "_llmchat_original", None) is not None:
        return original  # already installed

    def clean(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
        text = str(message)
        if text.startswith("jupyter_llmchat") or os.path.abspath(filename).startswith(_PACKAGE_DIR):
            return (text if text.startswith("jupyter_llmchat") else f"jupyter_llmchat: {text}") + "\n"
        return original(message, category, filename, lineno, line)

    clean._llmchat_original = original  # type: ignore[attr-defined]
    return clean


def show_line(shell: Any, text: str) -> None:
    """A quiet one-line output (plain text: safe whatever it holds)."""
    if getattr(shell, "kernel", None) is None:
        print(text)
        return
    from IPython.display import display

    show: Any = display  # IPython is untyped
    show({"text/plain": text}, raw=True)


def kernel_display() -> Callable[..., Any] | None:
    """IPython's ``display`` when running in a Jupyter kernel, else None (no import otherwise)."""
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None  # a terminal IPython: the stderr line reads better than reprinted outputs
    from IPython.display import display

    return display
