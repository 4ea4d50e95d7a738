"""The chat panel: an ipywidgets model bound to a session, shown by the labextension's view.

The front end (``labextension/src/panel*``) renders it with ``@jupyter/chat`` in JupyterLab's
right side area. State that changes rarely is synced as traits (session, busy, model, usage);
the conversation travels as custom messages so an answer costs bytes linear in its length:

front end -> kernel: ``{"type": "hello"}``, ``{"type": "send", "text", "id"}`` (``id``: the
question's bubble, shown at once, queued while the kernel runs a cell; the kernel's messages about
the question use it as ``user_id``), ``{"type": "stop"}``,
``{"type": "session", "name"}``, ``{"type": "names"}`` (the kernel's variable names, for ``@name``),
``{"type": "models"}`` (the server's ``/models``), ``{"type": "model", "name"}`` (the session's
model for later questions, from the panel and cells alike), ``{"type": "approval", "call_id",
"answer": "yes"|"no"|"always"}`` (Approve / Deny on a call's line).
kernel -> front end: ``{"type": "history", "messages"}``, ``{"type": "user", "message"}``,
``{"type": "delta", "id", "kind", "text"}`` (appended text, batched at most every 0.1 s),
``{"type": "done", "message", "user_id", "recorded"}`` (the finished turn without its text, which
the deltas carried), ``{"type": "append", "messages"}`` (turns made elsewhere: ``%%chat`` cells),
``{"type": "error", "message", "hint"}`` (plus ``"recorded"`` in answer to ``send``, and the
question's ``"id", "user_id"`` once it was accepted), ``{"type": "status", "text"}`` (e.g. the
local model starting), ``{"type": "tool", "id", "call"}`` (a tool call of the streaming answer
``id``, sent when asked and again with its result: ``call`` is ``{"id", "name", "args",
"arguments", "state": "running"|"ok"|"refused"|"error"|"stopped", "result", "seconds"}``, as in a turn's
``tools``; "stopped": the answer was stopped while the call ran, its late result discarded;
the front end shows it as text, never HTML), ``{"type": "notice", "text"}`` (a quiet line that
stays until the next question: old turns left out of a request), ``{"type": "names", "names"}``,
``{"type": "models", "models", "error"}``, ``{"type": "approve", "id", "call_id"}`` (the tool
approval asks: Approve / Deny on that call's line, until a result comes for it).

``@name`` in a question attaches the kernel value ``name`` as ``%%chat --with name`` does (the
same bounded summary and block); an unknown name is refused and nothing is sent. A question that
may pass the notebook's budget (``%chat_budget``) is refused by the spend guard every request
passes, and shows as any failed question does (``error``, ``recorded`` false); ``usage`` carries
the budget and what is left (``budget_usd``, ``left_usd``, ``budget_tokens``, ``left_tokens``).
``recorded`` false means the question did not enter history (refused, nothing
arrived, or the request failed): the front end drops the question's bubble and gives its text
back to the input; refusals carry the question's ``user_id`` too. A message's ``id`` is stable
until the next ``history``, which replaces all.
An exchange with tool rounds shows as its prompt and each assistant turn, with the calls (and
their results, from the user turn that carries them) on the turn that asked (a panel question
streams as one answer with its calls; a call's time is only known while it runs).

Panel questions stream in a background thread, so tokens show while the kernel is idle or busy
with other cells; the session's lock keeps the panel and ``%%chat`` cells from interleaving.
Stop reaches a streaming answer while a cell runs where the front end sends widget comm messages
on a kernel subshell (JupyterLab 4.6 does; 4.2 sends them to the main shell, where they wait for
the cell): the thread keeps the asking message as the parent of what it sends (see _thread_here).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import threading
import time
import types
import uuid
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
from IPython import get_ipython
from traitlets import Bool, Dict, List, Unicode

from .. import __version__, _sessions
from .._core._chat import AsyncChatStream, Chat, ChatExchange
from .._core._turns import ContentToolRequest, ContentToolResult, Turn, short_arguments, tool_round
from .._core._usage import UsageRow
from .._errors import ChatBusyError, LLMChatError, ToolRejectError
from .._local._model import LocalProvider
from . import _cellcontext as ctx
from . import _context
from ._approval import ANSWERS, answered_by
from ._bridge import current_bridge
from ._display import result_text

__all__ = ["ChatPanel", "panel"]

MODULE = "jupyter-llmchat"
#: The panel's ipywidgets module is the package's own labextension, of the package's version
#: (tokens.ts registers it, package.json ships it: tests/test_format_cases.py holds them equal).
MODULE_VERSION = f"^{__version__}"
DELTA_INTERVAL = 0.1
#: At most this many variable names go to the front end for ``@`` completion.
MAX_NAMES = 500
#: ``@name`` in a question: not after a word character, so an e-mail address is not one.
MENTION = re.compile(r"(?<![\w@])@([A-Za-z_][A-Za-z0-9_]*)")
#: Names every IPython namespace has that are not the user's variables.
_SHELL_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})


def tool_call(request: ContentToolRequest, result: ContentToolResult | None = None,
              seconds: float | None = None) -> dict[str, Any]:
    """One call as the panel shows it: a line (name, short arguments, ok / refused / error,
    time) that opens on the full arguments and result. All of it is shown as text, never as
    HTML. The time is the result's own (kept in the record, so a reloaded panel shows it), else
    ``seconds``."""
    call: dict[str, Any] = {
        "id": request.id, "name": request.name, "args": short_arguments(request.arguments),
        "arguments": json.dumps(request.arguments, ensure_ascii=False, indent=2),
        "state": "running", "result": None, "seconds": seconds,
    }
    if result is not None:
        call["state"] = result.status
        call["result"] = result_text(result.value, result.error)
        call["seconds"] = result.duration if result.duration is not None else seconds
        if result.status == "refused":
            call["seconds"] = None  # it never ran
    return call


def _tool_calls(turn: Turn, following: Turn | None) -> list[dict[str, Any]] | None:
    """The calls an assistant turn asked for, with their results from the turn after it."""
    requests = [c for c in turn.contents if isinstance(c, ContentToolRequest)]
    if not requests:
        return None
    results = {c.id: c for c in (following.contents if following else []) if isinstance(c, ContentToolResult)}
    return [tool_call(r, results.get(r.id)) for r in requests]


def _messages(turns: Sequence[Turn], ids: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for i, (t, msg_id) in enumerate(zip(turns, ids)):
        if tool_round(t):  # shown on its calls' lines, not as a message
            continue
        out.append(_message(t, msg_id, following=turns[i + 1] if i + 1 < len(turns) else None))
    return out


def _message(turn: Turn, msg_id: str, *, with_text: bool = True,
             following: Turn | None = None) -> dict[str, Any]:
    """``free``: the answer is known to have cost nothing, so a cost of 0 shows as "$0, local"."""
    tok = turn.tokens
    return {
        "id": msg_id,
        "role": turn.role,
        "text": turn.text if with_text else None,
        "tools": _tool_calls(turn, following),
        "thinking": (turn.thinking or None) if with_text else None,
        "partial": turn.partial,
        "source": turn.meta.get("source", "cell"),
        "model": turn.model,
        "time": turn.started_at.timestamp() if turn.started_at else time.time(),
        "tokens": tok.to_dict() if tok else None,
        "cost_usd": turn.cost,
        "free": turn.free,
        "finish_reason": turn.finish_reason,
    }


class ChatPanel(widgets.DOMWidget):  # type: ignore[misc,unused-ignore]  # ipywidgets is untyped
    """A chat panel for one session of this kernel."""

    _model_name = Unicode("ChatPanelModel").tag(sync=True)
    _view_name = Unicode("ChatPanelView").tag(sync=True)
    _model_module = Unicode(MODULE).tag(sync=True)
    _view_module = Unicode(MODULE).tag(sync=True)
    _model_module_version = Unicode(MODULE_VERSION).tag(sync=True)
    _view_module_version = Unicode(MODULE_VERSION).tag(sync=True)

    session = Unicode("default", help="Name of the session the panel talks through.").tag(sync=True)
    sessions = List(Unicode(), help="Session names for the picker.").tag(sync=True)
    busy = Bool(False, help="An answer is streaming (from the panel or a cell).").tag(sync=True)
    model = Unicode("", help="The session's model.").tag(sync=True)
    usage = Dict(help="The session's totals: answers, input, output, cached, cost_usd.").tag(sync=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict) and "text/plain" in bundle:
            # What a front end without the extension shows instead of the widget.
            bundle["text/plain"] = _NoPanel.MESSAGE
        return bundle

    def __init__(self, session: str = "default", *, context_max_tokens: int = 2000, **kwargs: Any) -> None:
        super().__init__(session=session, **kwargs)
        #: The bound of each ``@name`` value attached (``ChatMagics.context_max_tokens``, as --with).
        self.context_max_tokens = context_max_tokens
        self._chat: Chat | None = None
        #: How many of the session's turns the front end shows (its ids turn-0 ... turn-N-1).
        self._shown = 0
        #: Counts "history" messages: part of every id, so no id names two turns. (The front
        #: end's message components keep what they first showed under an id: a reused id would
        #: show an earlier session's turn, its model in the header, after switching back.)
        self._generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The panel's questions run on this loop, one at a time, each in a new thread; stop()
        #: cancels the running task from the kernel's thread.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        #: Counts session switches; a streaming answer stops showing after one.
        self._binds = 0
        self._stream_binds: int | None = None
        #: The id of the question being checked by ask(): its refusals name it.
        self._asking: str | None = None
        #: The answer streaming now, and its calls waiting for Approve / Deny: call id -> (the
        #: event its answer sets, the answer).
        self._answer_id: str | None = None
        self._approvals: dict[str, tuple[threading.Event, list[str]]] = {}
        self._approvals_lock = threading.Lock()
        self.on_msg(self._on_front_end)
        bridge = current_bridge()
        if bridge is not None:  # the status line shows the budget: hear of its changes
            bridge.on_budget_change(refresh_panels)
        self._bind(session)

    # -- binding to a session -----------------------------------------------------------------

    @property
    def chat(self) -> Chat | None:
        """The session's Chat the panel talks through (None only while it is being made)."""
        return self._chat

    def switch(self, name: str) -> None:
        """Talk through session ``name`` from now on, and show its whole history (also when a
        session of that name was replaced by another Chat: the panel follows it)."""
        self._bind(name)
        self._send_history()

    def refresh(self) -> None:
        """Show the session's settings and totals as they are now (model, busy, usage, budget)."""
        self._refresh()

    def _bind(self, name: str) -> None:
        chat = _sessions.session(name)
        self._binds += 1
        if self._chat is not None:
            self._chat.remove_listener(self._on_chat)
        self._chat = chat
        chat.add_listener(self._on_chat)
        self.session = name
        self._refresh()

    def _refresh(self) -> None:
        chat = self._chat
        if chat is None:
            return
        names = _sessions.session_names()
        self.sessions = names if self.session in names else [*names, self.session]
        self.model = chat.provider.model or ""
        self.busy = chat.busy
        total = UsageRow("", "").add_turns(chat.get_turns())
        self.usage = {
            "answers": total.turns,
            "input": total.input,
            "output": total.output,
            "cached": total.cached,
            "cost_usd": total.complete_cost,
            "free": total.free,
            **_budget_usage(),
        }

    def _send_history(self) -> None:
        """Replace what the front end shows by the session's whole history."""
        turns = self._chat.get_turns() if self._chat else []
        # Ids by position: between two "history" messages the front end only sees turns added
        # at the end (anything else sends the whole history again, see _on_turn).
        self._shown = len(turns)
        self._generation += 1
        messages = _messages(turns, [self._turn_id(i) for i in range(len(turns))])
        self.send({"type": "history", "messages": messages})

    def _on_chat(self, chat: Chat, event: str, exchange: ChatExchange | None = None) -> None:
        if chat is not self._chat:
            return
        if event == "start":
            self.busy = True
            return
        if event == "turn" and exchange is not None:
            self._on_turn(chat, exchange)
            self._context_note(exchange)
        elif event in ("reset", "set"):
            self._send_history()
        self._refresh()  # "model" too: the picker shows the session's model
        if event in ("turn", "abort") and threading.current_thread() is not self._thread:
            # A cell's answer ended. The panel's own question clears busy in its thread, after
            # its last message to the front end ("done" or "error").
            self.busy = False

    def _on_turn(self, chat: Chat, exchange: ChatExchange) -> None:
        ex = exchange.turns  # the prompt, any tool rounds, the answer
        k = len(ex)
        turns = chat.get_turns()
        n = len(turns)
        in_history = exchange.recorded and n >= k and all(a is b for a, b in zip(turns[n - k:], ex))
        if in_history and n - k != self._shown:
            # Not an addition at the end: a cell run again replaced its earlier exchange.
            self._send_history()
        elif self._streaming_here() and self._stream_binds == self._binds:
            # The panel's own question: the front end has it from the deltas and "tool"
            # messages, as one answer (ids by position only matter to the next "history").
            if in_history:
                self._shown = n
        elif in_history:
            # A %%chat cell's exchange, or another panel's on the same session.
            self._shown = n
            messages = _messages(ex, [self._turn_id(i) for i in range(n - k, n)])
            self.send({"type": "append", "messages": messages})
        else:  # an exchange kept out of history (%%chat --no-history): shown, not recorded
            messages = _messages(ex, [uuid.uuid4().hex for _ in ex])
            self.send({"type": "append", "messages": messages})

    def _context_note(self, exchange: ChatExchange) -> None:
        """The local model left old turns out of the request: one quiet line in the panel."""
        user = exchange.user_turn
        note = user.meta.get("context_note") if user is not None else None
        if note:
            self.send({"type": "notice", "text": str(note)})

    def _turn_id(self, index: int) -> str:
        return f"h{self._generation}-turn-{index}"

    def _streaming_here(self) -> bool:
        return self._thread is not None and self._thread is threading.current_thread()

    # -- messages from the front end ----------------------------------------------------------

    def _on_front_end(self, _: Any, content: dict[str, Any], buffers: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "hello":
            self._refresh()
            self._send_history()
        elif kind == "send":
            self.ask(str(content.get("text", "")), question_id=_question_id(content.get("id")))
        elif kind == "stop":
            self.stop()
        elif kind == "session":
            try:
                _sessions.check_name(str(content.get("name")))
                self.switch(str(content.get("name")))  # making the session may fail: said here
            except LLMChatError as exc:
                self.send({"type": "error", "message": exc.message, "hint": exc.hint})
        elif kind == "names":
            self.send({"type": "names", "names": _user_names()})
        elif kind == "models":
            _thread_here(self._send_models, (), f"jupyter_llmchat models {self.session}").start()
        elif kind == "model":
            self._set_model(str(content.get("name") or ""))
        elif kind == "approval":
            self._approved(str(content.get("call_id")), content.get("answer"))

    # -- tool approval: Approve / Deny on the call's line ---------------------------------------

    def _approve(self, request: ContentToolRequest) -> str:
        """The approval asks (on the panel's thread, see ``_run``): the front end shows Approve /
        Deny on the call's line; wait for its answer. Stop ends the wait with a refusal."""
        answered = threading.Event()
        box: list[str] = []
        with self._approvals_lock:
            self._approvals[request.id] = (answered, box)
        try:
            self.send({"type": "approve", "id": self._answer_id, "call_id": request.id})
            while not answered.wait(0.1):
                if self._stop.is_set():
                    raise ToolRejectError("the answer was stopped before the call was approved")
        finally:
            with self._approvals_lock:
                self._approvals.pop(request.id, None)
        return box[0]

    def _approved(self, call_id: str, answer: Any) -> None:
        """The front end's Approve / Deny (anything but a known answer is a no)."""
        with self._approvals_lock:
            waiting = self._approvals.get(call_id)
        if waiting is not None:
            waiting[1].append(answer if answer in ANSWERS else "no")
            waiting[0].set()

    def _send_models(self) -> None:
        """The server's ``/models`` (a blocking request: in its own thread); errors said quietly."""
        chat = self._chat
        current = chat.provider.model if chat is not None else None
        try:
            if chat is None:
                raise LLMChatError("no session")
            if isinstance(chat.provider, LocalProvider):
                # The bundled model is the one it serves (listing would start its server).
                models: list[str] = [current] if current else []
            else:
                models = chat.provider.list_models()
            error = ""
        except Exception as exc:  # shown quietly next to the picker, never raised in a thread
            models = [current] if current else []
            error = exc.message if isinstance(exc, LLMChatError) else f"{type(exc).__name__}: {exc}"
        self.send({"type": "models", "models": models, "error": error})

    def _set_model(self, name: str) -> None:
        chat = self._chat
        if chat is None or not name.strip():
            return
        try:
            chat.set_model(name)  # every panel on the session hears "model" and shows it
        except ChatBusyError:
            self.send({"type": "error", "message": f"session {self.session!r} is busy answering",
                       "hint": "change the model when the answer is in"})
            self._refresh()  # the picker goes back to the model in force

    def _refuse(self, message: str, hint: str = "") -> None:
        """A question not sent: the front end drops its bubble and gives the text back."""
        refusal: dict[str, Any] = {"type": "error", "message": message, "hint": hint, "recorded": False}
        if self._asking is not None:
            refusal["user_id"] = self._asking
        self.send(refusal)

    def _with_mentions(self, text: str) -> str | None:
        """``text`` with the ``@name`` values attached, or None (refused: an unknown name)."""
        names = list(dict.fromkeys(MENTION.findall(text)))
        if not names:
            return text
        shell = get_ipython()
        ns: dict[str, Any] = shell.user_ns if shell is not None else {}
        missing = [n for n in names if n not in ns]
        if missing:
            self._refuse(f"no variable named {missing[0]!r} in the kernel; nothing sent",
                         "@name attaches a variable of the notebook's kernel, as %%chat --with name")
            return None
        attached = [_context.summarize(n, ns[n], self.context_max_tokens) for n in names]
        self.send({"type": "notice", "text": _context.describe_attachments(attached)})
        return _context.attach(text, attached)

    def ask(self, text: str, question_id: str | None = None) -> None:
        """Send ``text`` through the session, streaming the answer in a background thread.

        ``question_id``: the id the front end shows the question under (a new one if None)."""
        self._asking = question_id or uuid.uuid4().hex
        try:
            self._ask(text, self._asking)
        finally:
            self._asking = None

    def _ask(self, text: str, user_id: str) -> None:
        if not text.strip():
            self._refuse("the message is empty")
            return
        chat = self._chat
        if not self.busy:
            # The previous answer said it is done; its thread (and the session's lock) may take
            # a moment more to let go: a question sent right then is not "busy".
            deadline = time.monotonic() + 1.0
            if self._thread is not None:
                self._thread.join(timeout=1.0)
            if chat is not None:
                chat.wait_idle(max(0.0, deadline - time.monotonic()))
        if chat is None or chat.busy or (self._thread is not None and self._thread.is_alive()):
            self._refuse(f"session {self.session!r} is busy answering", "wait for it to finish, or stop it")
            return
        sent = self._with_mentions(text)
        if sent is None:
            return
        text = sent
        self._stop.clear()
        self._thread = _thread_here(self._run, (text, user_id), f"jupyter_llmchat panel {self.session}")
        self.busy = True
        self._thread.start()

    def stop(self) -> None:
        """Stop the answer streaming from the panel; what arrived is kept, marked partial.

        Works while waiting too (a slow prefill, a hung server, the local model starting): the
        question's task is cancelled in its loop, and the core records what arrived, if anything.
        """
        self._stop.set()
        task, loop = self._task, self._loop
        if task is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: the question is over anyway
                pass

    def _run(self, text: str, user_id: str) -> None:
        """The panel thread: one question on this panel's own event loop."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        asyncio.set_event_loop(loop)
        task = loop.create_task(self._astream(text, user_id))
        self._task = task
        if self._stop.is_set():  # stopped before the task existed
            task.cancel()
        try:
            with answered_by(self._approve):  # the approval asks on the call's line
                loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            self._task = None

    def close(self) -> None:
        """Close the widget; an answer streaming from it is stopped, and its loop closed."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._loop is not None and not self._loop.is_running():
            self._loop.close()
        super().close()

    async def _astream(self, text: str, user_id: str) -> None:
        name = self.session
        answer_id = self._answer_id = uuid.uuid4().hex
        pending: list[tuple[str, str]] = []
        chat: Chat | None = None
        stream: AsyncChatStream[Any] | None = None
        calls: dict[str, tuple[ContentToolRequest, float]] = {}
        last_result = [0.0]
        # Switching session mid-stream: the front end shows the other session now, so this
        # answer's messages stop (a %%chat-like "append" shows it if the user comes back).
        binds = self._binds
        self._stream_binds = binds

        def live() -> bool:
            return self._binds == binds

        def flush() -> None:
            if live():
                for kind in ("thinking", "text"):
                    piece = "".join(p for k, p in pending if k == kind)
                    if piece:
                        self.send({"type": "delta", "id": answer_id, "kind": kind, "text": piece})
            pending.clear()

        async def tick() -> None:
            # Text waiting in `pending` goes out even when the stream pauses.
            while True:
                await asyncio.sleep(DELTA_INTERVAL)
                flush()

        def ours() -> Turn | None:
            return stream.turn if stream is not None else None

        def done() -> None:
            flush()
            reply = ours()
            if not live():
                return
            if reply is not None:
                final = _message(reply, answer_id, with_text=False)
                self.send({"type": "done", "message": final, "user_id": user_id, "recorded": True})
            else:  # stopped before anything arrived: history is unchanged
                self.send({"type": "done", "message": {"id": answer_id, "partial": True},
                           "user_id": user_id, "recorded": False})

        ticker: asyncio.Task[None] | None = None
        try:
            def status(line: str) -> None:
                self.send({"type": "status", "text": line})

            self.send({"type": "user", "message": {
                "id": user_id, "role": "user", "text": text, "source": "panel", "time": time.time()}})
            # Starting the local model blocks: in a worker thread, so Stop need not wait for it.
            chat = await asyncio.to_thread(_sessions.prepare, name, on_status=status)
            ticker = asyncio.ensure_future(tick())
            # After the cell of this session that ran last (DESIGN §10), not after every cell.
            bridge = current_bridge()
            after, at = bridge.panel_place(chat) if bridge is not None else (None, None)
            meta = {"source": "panel", **({"after_cell": after} if after is not None else {})}
            stream = chat.stream_async(text, content="all", meta=meta,
                                       replace=(at, at) if at is not None else None)
            try:
                async for item in stream:
                    if item.type == "text":
                        pending.append(("text", item.text))
                    elif item.type == "thinking":
                        pending.append(("thinking", item.thinking))
                    else:  # a tool call or its result: its line, as it happens
                        flush()
                        if isinstance(item, ContentToolRequest):
                            calls[item.id] = (item, time.monotonic())
                            call = tool_call(item)
                        else:
                            request, started = calls.pop(item.id)
                            now = time.monotonic()
                            # One after another or together: from the later of its request
                            # and the previous result (as in a cell).
                            call = tool_call(request, item, now - max(started, last_result[0]))
                            last_result[0] = now
                        if live():
                            self.send({"type": "tool", "id": answer_id, "call": call})
            finally:
                await stream.aclose()  # on stop: records the partial answer
            done()
        except asyncio.CancelledError:  # Stop: the core kept what arrived, if anything
            for request, started in calls.values():
                # Abandoned: its thread may finish later; that result goes nowhere.
                call = {**tool_call(request), "state": "stopped",
                        "seconds": time.monotonic() - max(started, last_result[0])}
                if live():
                    self.send({"type": "tool", "id": answer_id, "call": call})
            done()
        except Exception as exc:  # never let the thread die silently
            flush()
            if isinstance(exc, LLMChatError):
                message, hint = exc.message, exc.hint
            else:
                message, hint = f"{type(exc).__name__}: {exc}", ""
            if live():
                self.send({"type": "error", "id": answer_id, "user_id": user_id,
                           "recorded": ours() is not None, "message": message, "hint": hint})
        finally:
            if ticker is not None:
                ticker.cancel()
            self._stream_binds = None
            self._refresh()
            self.busy = False


def _thread_here(target: Any, args: tuple[Any, ...], name: str) -> threading.Thread:
    """A daemon thread running ``target`` in the caller's context (a new thread has none).

    ipykernel keeps the message being handled (the "parent") in a context variable and routes
    a comm's incoming messages to the subshell of the parent of what the comm last sent. A
    thread started from the front end's message keeps that message as the parent of what it
    sends; without it, the parent is whatever the kernel handled last, such as a running cell,
    and the front end's Stop would wait behind that cell in the main shell's queue.
    """
    return threading.Thread(target=contextvars.copy_context().run, args=(target, *args),
                            daemon=True, name=name)


def _question_id(value: Any) -> str | None:
    """The front end's id for a question: a short string, or None (the kernel makes one)."""
    return value if isinstance(value, str) and 0 < len(value) <= 100 else None


def _budget_usage() -> dict[str, Any]:
    """The notebook's budget and what is left, for the status line (empty: no budget)."""
    budget = ctx.get_budget()
    if not budget.active:
        return {}
    spent = ctx.spent()
    out: dict[str, Any] = {}
    if budget.usd is not None:
        out["budget_usd"] = budget.usd
        out["left_usd"] = max(0.0, budget.usd - spent.usd)
    if budget.tokens is not None:
        out["budget_tokens"] = budget.tokens
        out["left_tokens"] = max(0, budget.tokens - spent.tokens)
    return out


def _user_names() -> list[str]:
    """The notebook's own top-level variables (no values, no modules, no IPython names)."""
    shell = get_ipython()
    if shell is None:
        return []
    hidden = getattr(shell, "user_ns_hidden", {})
    names = []
    for name, value in list(shell.user_ns.items()):
        if (name.startswith("_") or name in hidden or name in _SHELL_NAMES
                or isinstance(value, types.ModuleType) or not name.isidentifier()):
            continue
        names.append(name)
        if len(names) >= MAX_NAMES:
            break
    return sorted(names)


def refresh_panels() -> None:
    """The budget changed (``%chat_budget``): every panel's status line says so."""
    for p in _live_panels():
        p.refresh()


def _live_panels() -> list[ChatPanel]:
    panels = _sessions.registry.panels
    panels[:] = [p for p in panels if p.comm is not None]
    return list(panels)


def _on_session(name: str, chat: Chat) -> None:
    # A session made by a cell (or replaced by use()) shows up in every panel's picker,
    # and a panel on a replaced session follows the new Chat.
    for p in _live_panels():
        if p.session == name and p.chat is not chat:
            p.switch(name)
        else:
            p.refresh()


def panel(session: str = "default", *, context_max_tokens: int | None = None) -> Any:
    """Open the chat panel for ``session`` (JupyterLab's right side panel).

    Returns the panel widget to display; calling it again for the same session reuses it.
    Without the JupyterLab extension, returns one line saying so.
    """
    _sessions.check_name(session)
    bridge = current_bridge()
    if bridge is None:
        shell = get_ipython()
        if shell is not None:
            shell.extension_manager.load_extension("jupyter_llmchat")
            bridge = current_bridge()
    if bridge is None or bridge.comm is None:
        # No comm at all (a terminal, a front end without comms): nothing could show a widget.
        return _NoPanel()
    # With a comm, the front end decides: under Run All its hello has not arrived yet, so the
    # widget goes out with the one-line message as its text/plain for a front end without us.
    _sessions.refresh(session)
    for existing in _live_panels():
        if existing.session == session:
            return existing
    if _on_session not in _sessions.registry.hooks:
        _sessions.on_session(_on_session)
    bridge.on_budget_change(refresh_panels)  # the status lines show the budget
    if context_max_tokens is None:  # the shell's ChatMagics setting, where the magics are loaded
        magics = _sessions.registry.magics.get(bridge.shell)
        context_max_tokens = getattr(magics, "context_max_tokens", 2000)
    widget = ChatPanel(session, context_max_tokens=context_max_tokens)
    _sessions.registry.panels.append(widget)
    return widget


class _NoPanel:
    """What %chat_panel shows where the labextension is not installed or not active."""

    MESSAGE = (
        "The chat panel needs the jupyter_llmchat extension in JupyterLab 4 or Notebook 7; "
        "it is not active here. Use %%chat cells instead."
    )

    def __repr__(self) -> str:
        return self.MESSAGE

    def _repr_html_(self) -> str:
        return f"<div>{self.MESSAGE}</div>"
