"""Many prompts at once: ``parallel_chat``, ``parallel_chat_text``, ``parallel_chat_structured``.

Each prompt is sent on its own ``chat.copy()`` (the chat given is left untouched), so every
answer sees the same history. Ported from ellmer's ``parallel_chat()``, with chatlas's shape for
``parallel_chat_structured``; unlike chatlas's, these are plain functions, usable from a notebook
cell whose event loop is already running (the requests run on a private loop in a private thread).

Limits: at most ``max_active`` requests in flight (a semaphore) and at most ``rpm`` request starts
per minute (a token bucket of one token, refilled every ``60 / rpm`` seconds: starts are spaced,
never bursty). The sync tools a prompt's answers call run in a pool of ``max_active`` threads, so
those of different prompts run at the same time, as async tools do on the loop.

Retries are the client's own (``max_tries`` of the chat's provider, default 3: connect errors,
408, 429 and 5xx, honouring ``Retry-After``); nothing here retries again, so a 429 is never
retried 3 x 3 times. A request that still fails is *reported, not raised*: its slot holds None
(for ``parallel_chat``, the exception itself, as ellmer does) and ``results.errors[i]`` holds the
exception. What happens to the other prompts is ``on_error``'s choice, as in ellmer:

- ``"return"`` (default): start no new request, let those in flight finish, return;
- ``"continue"``: send every prompt whatever fails;
- ``"stop"``: cancel what is in flight and raise ``ParallelChatError`` (``.results`` keeps what
  finished).

Each request passes the spend guard (``_spend.spend_guard``: the notebook's ``%chat_budget``)
as it starts, with the others' worst case held while they are in flight: a refused prompt fails
on its own (``results.errors[i]`` is a ``BudgetExceeded``); a batch refused before anything was
sent raises that refusal.

Ctrl-C (KeyboardInterrupt, e.g. the notebook's interrupt button) cancels the requests in flight
and *returns* what finished: the unfinished slots are None, ``results.interrupted`` is True and
one line on stderr says so. Returning rather than raising keeps the finished (paid-for) answers
in the cell's variable.

The progress line (answers/total, failures apart, tokens, cost, and a note when the ``rpm``
limit is what holds the run back) is one notebook output updated in place
(``display_id``) a few times a second; outside a Jupyter kernel it is a ``\\r`` line on a terminal's
stderr, and nothing when stderr is not a terminal. The notebook's display comes through
``notebook_display`` (the package wires the Jupyter layer's in), so this module imports no IPython.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from .._errors import BudgetExceeded, ConfigurationError, ParallelChatError
from ._usage import UsageRow, format_row_cost, format_tokens

if TYPE_CHECKING:  # pragma: no cover
    from ._chat import Chat
    from ._turns import Content

__all__ = [
    "OnError",
    "ParallelResults",
    "parallel_chat",
    "parallel_chat_structured",
    "parallel_chat_text",
    "run_on_caller",
]

OnError = Literal["return", "continue", "stop"]
_ON_ERROR = ("return", "continue", "stop")

#: Progress updates per second in a notebook (DESIGN §8 allows 10 messages a second).
PROGRESS_HZ = 4.0

T = TypeVar("T")
R = TypeVar("R")


class ParallelResults(list[T], Generic[T]):
    """The results in prompt order (a plain ``list``), plus what went wrong.

    ``errors`` maps a prompt's index to the exception its request ended with; ``interrupted`` is
    True when Ctrl-C stopped the run (unfinished slots are None)."""

    def __init__(
        self,
        items: Iterable[T] = (),
        errors: Mapping[int, Exception] | None = None,
        interrupted: bool = False,
    ) -> None:
        super().__init__(items)
        self.errors: dict[int, Exception] = dict(errors or {})
        self.interrupted = interrupted


def parallel_chat(
    chat: Chat,
    prompts: Iterable[str | Content | Sequence[str | Content]],
    max_active: int = 10,
    rpm: int = 500,
    *,
    on_error: OnError = "return",
    progress: bool = True,
    kwargs: Mapping[str, Any] | None = None,
) -> ParallelResults[Chat | Exception | None]:
    """Send each prompt on its own copy of ``chat``, ``max_active`` at a time.

    Each prompt is a str or a list of contents (str, ``ContentImage``...). Returns, in prompt
    order, one ``Chat`` per prompt (a copy of ``chat`` with that exchange appended), the
    exception for a request that failed, or None for one that was never sent. ``kwargs`` go to
    ``Chat.chat_async`` (e.g. ``{"params": params(max_tokens=64)}``).
    """

    async def send(copy: Chat, args: tuple[Any, ...]) -> Chat:
        await copy.chat_async(*args, echo="none", **dict(kwargs or {}))
        return copy

    results = _run("parallel_chat", chat, prompts, send, max_active, rpm, on_error, progress)
    out: ParallelResults[Chat | Exception | None] = ParallelResults(
        results, results.errors, results.interrupted
    )
    for i, exc in results.errors.items():
        out[i] = exc  # ellmer puts the error object in the failed slot
    return out


def parallel_chat_text(
    chat: Chat,
    prompts: Iterable[str | Content | Sequence[str | Content]],
    max_active: int = 10,
    rpm: int = 500,
    *,
    on_error: OnError = "return",
    progress: bool = True,
    kwargs: Mapping[str, Any] | None = None,
) -> ParallelResults[str | None]:
    """Like ``parallel_chat``, but the answers' text; None where a request failed or never ran
    (``results.errors`` says why)."""

    async def send(copy: Chat, args: tuple[Any, ...]) -> str:
        return await copy.chat_async(*args, echo="none", **dict(kwargs or {}))

    return _run("parallel_chat_text", chat, prompts, send, max_active, rpm, on_error, progress)


def parallel_chat_structured(
    chat: Chat,
    prompts: Iterable[str | Content | Sequence[str | Content]],
    data_model: Any,
    max_active: int = 10,
    rpm: int = 500,
    *,
    on_error: OnError = "return",
    progress: bool = True,
    kwargs: Mapping[str, Any] | None = None,
) -> ParallelResults[Any]:
    """Like ``parallel_chat``, but each answer as an instance of ``data_model`` (through
    ``Chat.chat_structured_async``); None where a request or its parsing failed."""
    async def send(copy: Chat, args: tuple[Any, ...]) -> Any:
        return await copy.chat_structured_async(
            *args, data_model=data_model, **dict(kwargs or {})
        )

    return _run(
        "parallel_chat_structured", chat, prompts, send, max_active, rpm, on_error, progress,
    )


# -- the engine -------------------------------------------------------------------------------


def _run(
    label: str,
    chat: Chat,
    prompts: Iterable[Any],
    send: Callable[[Chat, tuple[Any, ...]], Awaitable[R]],
    max_active: int,
    rpm: int,
    on_error: str,
    progress: bool,
) -> ParallelResults[R | None]:
    """Check the arguments, then run every request on a private loop in a private thread."""
    from ._chat import Chat

    if not isinstance(chat, Chat):
        raise ConfigurationError(f"{label}() takes a Chat, not a {type(chat).__name__}")
    args = _prompt_args(label, prompts)
    if isinstance(max_active, bool) or not isinstance(max_active, int) or max_active < 1:
        raise ConfigurationError(f"max_active must be a positive int, got {max_active!r}")
    if isinstance(rpm, bool) or not isinstance(rpm, (int, float)) or rpm <= 0:
        raise ConfigurationError(f"rpm must be a positive number, got {rpm!r}")
    if on_error not in _ON_ERROR:
        raise ConfigurationError(f"on_error={on_error!r} is not one of {', '.join(_ON_ERROR)}")
    if not args:
        return ParallelResults()
    # Ask the server for its model once, here, not once per copy (and not from inside the loop:
    # it is a blocking call). The template is a copy, so ``chat`` itself stays untouched.
    template = chat.copy()
    template.get_model()
    template.provider.close()

    state = _State(len(args), len(template.get_turns()), rpm=float(rpm),
                   max_active=max_active)
    batch = _Batch(template, args, send, max_active, float(rpm), on_error, state)
    line = _ProgressLine(label, state) if progress else None
    interrupted = _in_private_loop(batch.run, line)
    if interrupted:
        kept = sum(1 for i, r in enumerate(batch.results) if r is not None and i not in batch.errors)
        print(
            f"{label}: interrupted; kept {kept} of {len(args)} results (the others are None)",
            file=sys.stderr,
        )
    results: ParallelResults[R | None] = ParallelResults(
        batch.results, batch.errors, interrupted
    )
    refused = [e for e in batch.errors.values() if isinstance(e, BudgetExceeded)]
    if refused and len(refused) == len(batch.errors) and state.done == 0 and not interrupted:
        # The budget (every request passes the spend guard) refused the batch before anything
        # was sent: nothing to return, so the refusal is the answer.
        first = min(batch.errors)
        why = batch.errors[first]
        # Its own kind: a replay-only refusal stays a ReplayOnlyError.
        raise (type(why) if isinstance(why, BudgetExceeded) else BudgetExceeded)(
            f"{label}: prompt {first + 1} of {len(args)} refused, nothing sent: "
            + (why.message if isinstance(why, BudgetExceeded) else str(why))
        ) from None
    if on_error == "stop" and batch.errors and not interrupted:
        first = min(batch.errors)
        exc = batch.errors[first]
        raise ParallelChatError(
            # Counted from 1, as a reader counts; the index says where it is in the results.
            f"prompt {first + 1} of {len(args)} failed (errors[{first}]): {exc}",
            results=results,
            errors=batch.errors,
        ) from exc
    return results


def _prompt_args(label: str, prompts: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Each prompt as the positional arguments of one ``chat_async`` call."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Iterable):
        raise ConfigurationError(
            f"{label}() takes a list of prompts, not a {type(prompts).__name__}",
            hint="wrap a single prompt in a list: [prompt]",
        )
    out: list[tuple[Any, ...]] = []
    for p in prompts:
        if isinstance(p, (list, tuple)):
            out.append(tuple(p))
        else:
            out.append((p,))
    return out


class _State:
    """Counters the loop thread writes and the progress line reads (ints and floats: no lock)."""

    def __init__(
        self, total: int, base: int = 0, *, rpm: float = 0.0, max_active: int = 0
    ) -> None:
        self.total = total
        self.rpm = rpm
        self.max_active = max_active
        #: Starts after the first ``max_active`` (those all queue at once), and how many of them
        #: waited for the rpm limit: when most did, the limit is what holds the run back.
        self.later_starts = 0
        self.paced_starts = 0
        #: Turns each copy starts with (the template's history): the answers after them are new.
        self.base = base
        self.done = 0
        self.failed = 0
        #: The answers' totals, by the one rule of every view (None = unknown).
        self.usage = UsageRow("", "")
        self.changes = 0

    def add(self, copy: Chat) -> None:
        # Every request of the exchange: a tool round is one more answer.
        self.usage.add_turns(copy.get_turns()[self.base:])
        self.done += 1
        self.changes += 1

    def fail(self) -> None:
        self.failed += 1
        self.changes += 1

    def started(self, n: int, waited: float) -> None:
        """Request ``n`` (0-based) started after ``waited`` seconds in the rpm limiter."""
        if n < self.max_active:
            return
        self.later_starts += 1
        if waited > 0:
            self.paced_starts += 1
            self.changes += 1

    @property
    def paced(self) -> bool:
        # A few starts, most of them held: not the one burst every run starts with.
        return self.later_starts >= 3 and 2 * self.paced_starts > self.later_starts

    def line(self) -> str:
        # Failures apart: "done" counts answers, so 10/10 never hides a failed request.
        parts = [f"{self.done}/{self.total} done"]
        if self.failed:
            parts[0] += f", {self.failed} failed"
        u = self.usage
        if self.done and u.unknown_tokens == u.turns:
            parts.append("tokens n/a")
        elif self.done:
            n_in, n_out = (format_tokens(n or 0, unknown=u.unknown_tokens) for n in (u.input, u.output))
            parts.append(f"tokens {n_in} in, {n_out} out")
        if self.done:
            parts.append("cost " + format_row_cost(u.cost, unknown=u.unknown_cost, free=u.free))
        if self.paced:
            parts.append(f"held back by rpm={self.rpm:g} (at most {self.rpm / 60:.3g} requests/s): "
                         "pass a higher rpm= if the server allows")
        return " · ".join(parts)


class _RateLimiter:
    """A token bucket holding one token, refilled every ``60 / rpm`` seconds.

    Each caller books the next free start time before it sleeps, so waiting callers never
    share a slot and starts stay ``60 / rpm`` apart: at most ``rpm`` in any minute."""

    def __init__(self, rpm: float) -> None:
        self.interval = 60.0 / rpm
        self._next = 0.0

    async def wait(self) -> float:
        """Wait for this start's slot; returns how long that was (0: the limit held nothing)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next)
        self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)
        return start - now


class _Batch(Generic[R]):
    """One run: the tasks, the limits and the results, on the private loop."""

    def __init__(
        self,
        template: Chat,
        args: list[tuple[Any, ...]],
        send: Callable[[Chat, tuple[Any, ...]], Awaitable[R]],
        max_active: int,
        rpm: float,
        on_error: str,
        state: _State,
    ) -> None:
        self.template = template
        self.args = args
        self.send = send
        self.max_active = max_active
        self.rpm = rpm
        self.on_error = on_error
        self.state = state
        self.results: list[R | None] = [None] * len(args)
        self.errors: dict[int, Exception] = {}
        self._stopping = False
        self._started = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        self._semaphore = asyncio.Semaphore(self.max_active)
        # Sync tools run in the loop's default executor (``Tool.ainvoke``): as many threads as
        # requests may be in flight, so the tools of different prompts run at the same time
        # (asyncio's own default has min(32, CPUs + 4) threads). Closed with the private loop.
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(
            self.max_active, thread_name_prefix="jupyter_llmchat-tool"))
        self._limiter = _RateLimiter(self.rpm)
        # One connection pool for the whole run, sized to max_active: a client per copy would
        # open (and close) a connection per prompt.
        self._client = self.template.provider.new_async_client(self.max_active)
        self._tasks = [asyncio.ensure_future(self._one(i)) for i in range(len(self.args))]
        try:
            await asyncio.wait(self._tasks)
        finally:
            # Cancelled (Ctrl-C) or done: nothing of ours may outlive the loop.
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            try:
                await self._client.aclose()
            except Exception:  # closing is best effort; the answers are already recorded
                pass

    async def _one(self, i: int) -> None:
        async with self._semaphore:
            if self._stopping:
                return
            n = self._started
            self._started += 1
            self.state.started(n, await self._limiter.wait())
            if self._stopping:
                return
            copy = self.template.copy()
            copy.provider.use_async_client(self._client)
            try:
                value = await self.send(copy, self.args[i])
            except Exception as exc:  # reported in its slot: one failure loses no other answer
                self.errors[i] = exc
                self.state.fail()
                self._failed()
                return
            finally:
                # The pool dies with this run's loop: a copy used later makes its own client.
                copy.provider.use_async_client(None)
            self.results[i] = value
            self.state.add(copy)

    def _failed(self) -> None:
        if self.on_error == "continue":
            return
        self._stopping = True
        if self.on_error == "stop":
            current = asyncio.current_task()
            for task in self._tasks:
                if task is not current:
                    task.cancel()


class _Handoff:
    """Work the private loop's thread hands to the caller's thread, which waits for the run
    anyway: what only the caller's thread can do (the tool approval's prompt, which reads the
    kernel's stdin). One at a time; closed when the caller stops waiting."""

    def __init__(self) -> None:
        self.work: queue.Queue[tuple[Callable[[], Any], dict[str, Any], threading.Event]] = (
            queue.Queue())
        self.lock = threading.Lock()
        self.closed = False

    def serve(self, timeout: float) -> None:
        """On the caller's thread: run what is handed over within ``timeout`` seconds."""
        try:
            fn, box, answered = self.work.get(timeout=timeout)
        except queue.Empty:
            return
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back; Ctrl-C also stops the run here
            box["error"] = exc
            if isinstance(exc, KeyboardInterrupt):
                raise
        finally:
            answered.set()

    def close(self) -> None:
        with self.lock:
            self.closed = True
        while True:
            try:
                _, box, answered = self.work.get_nowait()
            except queue.Empty:
                return
            box["error"] = LookupError("the parallel_chat run ended before it was answered")
            answered.set()


_handoffs = threading.local()


def run_on_caller(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the thread that called ``parallel_chat`` and return its result (called
    from the run's own thread); ``LookupError`` where there is no such caller, or it stopped
    waiting. The run's loop waits meanwhile: this is for a short, modal question."""
    handoff: _Handoff | None = getattr(_handoffs, "current", None)
    if handoff is None:
        raise LookupError("not inside a parallel_chat run")
    box: dict[str, Any] = {}
    answered = threading.Event()
    with handoff.lock:
        if handoff.closed:
            raise LookupError("the parallel_chat run is ending")
        handoff.work.put((fn, box, answered))
    answered.wait()
    if "error" in box:
        error = box["error"]
        if isinstance(error, Exception):
            raise error
        raise LookupError("interrupted")  # Ctrl-C at the caller: not raised in the loop's thread
    return box["value"]  # type: ignore[no-any-return]


def _in_private_loop(
    main: Callable[[], Coroutine[Any, Any, None]], line: _ProgressLine | None
) -> bool:
    """Run ``main()`` on a new loop in a new thread; this thread shows progress and takes Ctrl-C.

    Returns whether Ctrl-C interrupted it (the results so far are kept). A thread of our own
    works the same whether or not the caller's thread runs a loop (a notebook's does, and
    ``asyncio.run`` would refuse to nest); and the calling thread stays free to receive
    KeyboardInterrupt and to own the notebook output."""
    interrupted = False
    ready = threading.Event()
    done = threading.Event()
    box: dict[str, Any] = {}
    handoff = _Handoff()

    def work() -> None:
        _handoffs.current = handoff
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(main())
            box["loop"], box["task"] = loop, task
            ready.set()
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass  # Ctrl-C in the caller: the results so far are kept
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                ready.set()
                done.set()

    thread = threading.Thread(target=work, name="jupyter_llmchat-parallel", daemon=True)
    if line is not None:
        line.show()
    thread.start()
    try:
        while not done.is_set():
            handoff.serve(1.0 / PROGRESS_HZ)
            if line is not None:
                line.update()
    except KeyboardInterrupt:
        interrupted = True
        handoff.close()
        ready.wait()
        loop, task = box.get("loop"), box.get("task")
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile: nothing left to cancel
                pass
        done.wait()  # the cancel is quick: each task records its partial turn and returns
    handoff.close()
    thread.join()
    if line is not None:
        line.update(final=True)
    if "error" in box:
        raise box["error"]
    return interrupted


#: Returns IPython's ``display`` when running in a Jupyter kernel, else None; wired by the
#: package's ``__init__`` (the Jupyter layer's ``kernel_display``), None: stderr only.
notebook_display: Callable[[], Callable[..., Any] | None] | None = None


class _ProgressLine:
    """``label: 7/10 done · tokens ... · cost ...``: one notebook output updated in place."""

    def __init__(self, label: str, state: _State) -> None:
        self.label = label
        self.state = state
        self._handle: Any = None
        self._tty = False
        self._seen = -1
        self._last = 0.0

    def text(self) -> str:
        return f"{self.label}: {self.state.line()}"

    def show(self) -> None:
        display = notebook_display() if notebook_display is not None else None
        if display is not None:
            self._handle = display({"text/plain": self.text()}, raw=True, display_id=True)
        else:
            isatty = getattr(sys.stderr, "isatty", None)
            self._tty = bool(isatty and isatty())
            self._write()
        self._seen = self.state.changes
        self._last = time.monotonic()

    def update(self, final: bool = False) -> None:
        if self.state.changes == self._seen and not final:
            return
        now = time.monotonic()
        if not final and now - self._last < 1.0 / PROGRESS_HZ:
            return
        self._seen = self.state.changes
        self._last = now
        if self._handle is not None:
            self._handle.update({"text/plain": self.text()}, raw=True)
        else:
            self._write(end="\n" if final else "")

    def _write(self, end: str = "") -> None:
        if self._tty:
            sys.stderr.write("\r" + self.text() + end)
            sys.stderr.flush()
