"""One question of a cell, from its text to its finished output.

``CellRunner.run`` is what ``%%chat``, ``%chat`` and ``%chat_fix`` do once their options are
parsed, in steps of its own: the question (checks, ``{{ }}``, ``--with``), the session, where
the cell's exchange is in the notebook's order of cells (``_record/_order.py``: the cells above
it are its history, a re-run replaces its exchange in place, ``--new`` starts the conversation of
the cells below it), a recorded answer shown again, or the request streamed into the cell's
display with its three error paths (Ctrl-C, the budget, the server). When the cell's execution
ends, its exchanges leave the sessions it no longer answers in (another ``-s``, ``--no-history``,
a failure before any token), as a reader of the notebook sees it. The spend guard itself is the
core's (every request passes it); this module only says what a refusal means in a cell. Whether
a recorded answer still answers the cell is the core's replay key (``_replay``); a cell asked
again instead says why in one line, and in replay-only mode (``ChatMagics.replay = "only"``,
``JUPYTER_LLMCHAT_REPLAY=only``) fails saying it.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from IPython.core.error import UsageError

from .. import _sessions
from .._core import _spend
from .._core._params import params as make_params
from .._core._replay import ReplayCheck, Request, check_replay
from .._core._spend import spend_guard
from .._core._turns import NEW_KEY, conversation_start, exchange_end
from .._errors import (
    AuthenticationError,
    BudgetExceeded,
    ConfigurationError,
    LLMChatError,
    StreamError,
    raise_clean,
)
from .._record._metadata import KEY, display_metadata
from .._record._order import CellOrder, exchange_spans
from . import _cellcontext as ctx
from . import _context
from ._bridge import current_bridge, missing_extension_note
from ._display import AnswerDisplay, StreamDisplay, TerminalDisplay, show_line
from ._kernel_tools import cell_tools
from ._prompt import check_output_name, code_block, interpolate, output_value

__all__ = ["CellRunner", "Settings"]


class Settings(Protocol):
    """What a run reads of the magics' configuration (``ChatMagics`` traits)."""

    default_format: str
    display_rate_hz: float
    context_max_tokens: int
    replay: bool | str
    footer: bool
    credentials_env: str

    def made_from_config(self, session: str) -> bool: ...


@dataclass
class _Question:
    """A question ready to send: its text with ``{{ }}`` and attachments, and this cell's params."""

    text: str
    overrides: dict[str, Any]
    fmt: str
    #: ``--tools``: offered for this cell's exchange only.
    tools: list[Any]
    #: The question before its attachments, and (name, content key) of each ``--with`` value.
    prompt: str = ""
    attached: tuple[tuple[str, str], ...] = ()


@dataclass
class _Execution:
    """One execution of a notebook cell (by its request's id): whether a question of it was
    asked or replayed, and the sessions that hold its exchanges now."""

    cell: str
    run: str | None
    asked: bool = False
    kept: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)


class CellRunner:
    """Runs the questions of a shell's cells; keeps where each cell's exchange is."""

    def __init__(self, shell: Any, settings: Settings, cell_runs: Any) -> None:
        self.shell = shell
        self.settings = settings
        #: The last failed cell, for %chat_fix (a chat request that failed is noted there).
        self.cell_runs = cell_runs
        #: Per session, cell id -> (the execution (its request's msg_id) that last sent from that
        #: cell, and the span of the history its next exchange takes: a second %chat line of the
        #: same execution goes after the first, in place of what is left of the cell's earlier
        #: run). Per session: the lines of one cell may ask in several.
        self._runs: weakref.WeakKeyDictionary[Any, dict[str, tuple[str, int, int]]] = (
            weakref.WeakKeyDictionary())
        #: The cell execution under way (ended by ``cell_done``).
        self._current: _Execution | None = None
        #: The order of first runs, for a shell with no front-end bridge.
        self._order = CellOrder()
        #: Where cells have no id: per session, the index of the next recorded exchange a re-run
        #: notebook may replay (restored sessions start at 0; a fresh question moves it to the end).
        self._replay_next: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    # -- the steps of a run ---------------------------------------------------------------------

    def run(self, args: Any, prompt: str, *, template: bool = True) -> Any:
        __tracebackhide__ = True  # noqa: F841 - %xmode Verbose shows the user's frames, not ours
        question = self._question(args, prompt, template)
        display = self.display()
        chat = self._session(args, display)
        cell_id, run_id = parent_ids(self.shell)
        if (note := missing_extension_note(cell_id)) is not None:  # once: JupyterLab, no extension
            show_line(self.shell, note)
        self._execution(cell_id, run_id)
        rerun = self._slot(chat, cell_id, run_id)
        if args.dry_run:
            return self._dry_run(args, chat, question, rerun)
        if args.system is not None:
            chat.system_prompt = args.system
        if args.no_history:
            rerun = None
        check = self._replayed(args, chat, question, display, cell_id, run_id, rerun)
        if check.index is not None:
            return None
        # Replay-only (the environment's or ChatMagics.replay = "only", set on the core's spend
        # guard, which refuses any request then): the cell fails first, naming what changed.
        only = spend_guard.replay_only()
        if only is not None:
            if check.reason():
                what = f"its recorded answer does not match: {check.reason()}"
            else:
                what = ("a --no-history cell is never recorded" if args.no_history
                        else "it has no recorded answer")
            raise UsageError(f"replay-only mode ({only}): {what}; nothing sent")
        if check.reason():
            show_line(self.shell, f"asked again: {check.reason()}")
        return self._ask(args, chat, question, display, cell_id, run_id, rerun)

    def _question(self, args: Any, prompt: str, template: bool) -> _Question:
        """Check the options, then the prompt with ``{{ }}`` filled and ``--with`` attached."""
        if not prompt.strip():
            raise UsageError("empty prompt: write your question after %chat, or in the cell below %%chat")
        if args.system is not None and not args.system.strip():
            raise UsageError("--system needs a text")
        try:
            _sessions.check_name(args.session)
            overrides = make_params(temperature=args.temperature, max_tokens=args.max_tokens)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
        if args.output is not None:
            check_output_name(args.output)
        bare = interpolate(prompt, self.shell.user_ns) if template else prompt
        # The replay key holds each value's content, not only its summary (a dry run needs none).
        attached = ctx.attachments(args.with_names, self.shell.user_ns,
                                   self.settings.context_max_tokens, fingerprint=not args.dry_run)
        text = _context.attach(bare, attached)
        tools = cell_tools(args.tool_names, self.shell, self.settings.context_max_tokens,
                           self.cell_runs)
        if attached and not args.dry_run:  # first, above the answer (a dry run shows them whole)
            show_line(self.shell, _context.describe_attachments(attached))
        return _Question(text, overrides, args.format or self.settings.default_format, tools, bare,
                         tuple((a.name, a.content_key()) for a in attached))

    def _session(self, args: Any, display: AnswerDisplay) -> Any:
        try:
            # Replay-only: nothing will be sent, so the local model is not started either.
            chat = _sessions.prepare(args.session, on_status=display.status,
                                     start=spend_guard.replay_only() is None)
        except LLMChatError as exc:
            raise UsageError(str(exc)) from None
        if chat.busy:
            raise UsageError(
                f"session {args.session!r} is busy answering (in the chat panel?): "
                "wait for it, or stop it there"
            )
        return chat

    def _execution(self, cell_id: str | None, run_id: str | None) -> None:
        """Note the cell execution this question belongs to (one that ends another ends it)."""
        current = self._current
        if current is not None and (current.cell, current.run) == (cell_id, run_id):
            return
        if current is not None:
            self.cell_done()
        self._current = _Execution(cell_id, run_id) if cell_id is not None else None

    def cell_done(self) -> None:
        """IPython's post_execute: the cell that ran a question leaves the sessions it did not
        answer in this time (DESIGN §10): its exchanges there are taken out, as a reader of the
        notebook no longer sees them in the cell. That is a session of an earlier ``-s``, or its
        own after ``--no-history`` or a failure before any token (a partial answer is kept in
        place). Their spend stays in the ledger: nothing the user asked is dropped."""
        done, self._current = self._current, None
        if done is None or not done.asked:
            return
        left = False
        for chat in list(_sessions.sessions().values()):
            if chat in done.kept or chat.busy:
                continue
            turns = chat.get_turns()
            gone = [e for e in exchange_spans(turns) if e.anchor == done.cell and not e.panel]
            if gone:
                out = {i for e in gone for i in range(e.start, e.end)}
                chat.set_turns([t for i, t in enumerate(turns) if i not in out])
                left = True
        bridge = current_bridge()
        if left and bridge is not None:
            bridge.send_stale()  # the cells below it stand on another conversation now

    def _slot(self, chat: Any, cell_id: str | None, run_id: str | None) -> tuple[int, int] | None:
        """The span of the history this execution's exchange takes (None: the end): the cell's
        earlier exchange, or, for a cell that has none, the place after the cells above it. A
        second %chat line of the same execution comes after the first (both are kept)."""
        if cell_id is None:
            return None
        run = self._runs.get(chat, {}).get(cell_id)
        if run is not None and run_id is not None and run[0] == run_id:
            return run[1], run[2]
        bridge = current_bridge()
        if bridge is not None and bridge.shell is self.shell:
            bridge.note_cell(cell_id, chat)
            return bridge.order.span(chat.get_turns(), cell_id)
        self._order.ran(cell_id)
        return self._order.span(chat.get_turns(), cell_id)

    def _replayed(
        self, args: Any, chat: Any, question: _Question, display: AnswerDisplay,
        cell_id: str | None, run_id: str | None, rerun: tuple[int, int] | None,
    ) -> ReplayCheck:
        """Show the recorded answer of this question if there is one (no request, no spend);
        else say why not (nothing to say when nothing was recorded or replay is off).

        A notebook cell replays only its own recorded exchange, found where the notebook's order
        puts it. Where cells have no id (nbclient, terminal IPython), the notebook is taken in
        order: the next recorded one."""
        turns = chat.get_turns()
        if cell_id is None:
            at: int | None = self._replay_next.get(chat, 0)
        elif rerun is not None and _holds(turns, rerun, cell_id):
            at = rerun[0]
        else:
            at = None
        only = spend_guard.replay_only() is not None  # it overrides --refresh and replay = False
        if not only and (not self.settings.replay or args.refresh) or args.no_history or at is None:
            return ReplayCheck(None)
        past = [] if args.new else turns[conversation_start(turns, at):at]
        check = check_replay(turns, at, request_of(chat, args.model, question, past))
        if check.index is None:
            return check
        end = exchange_end(turns, check.index)
        self._replay_next[chat] = end
        self._note_run(chat, cell_id, run_id, end, rerun[1] if rerun is not None else end)
        self._replay(display, chat, args, question.fmt, check.index)
        if self._current is not None:
            self._current.asked = True
            self._current.kept.add(chat)
        _mark_new(chat, check.index, args.new)
        return check

    def _ask(
        self, args: Any, chat: Any, question: _Question, display: AnswerDisplay,
        cell_id: str | None, run_id: str | None, rerun: tuple[int, int] | None,
    ) -> Any:
        __tracebackhide__ = True  # noqa: F841 - as in run
        fmt = question.fmt
        turns = chat.get_turns()
        at = rerun[0] if rerun is not None else len(turns)
        past = [] if args.no_history or args.new else turns[conversation_start(turns, at):at]
        keys = request_of(chat, args.model, question, past).meta()
        meta = {"cell_id": cell_id, "source": "cell", **keys}
        if args.new:
            meta[NEW_KEY] = True
        # Until this answer is in, a second %chat line of this execution takes the same span.
        if rerun is not None:
            self._note_run(chat, cell_id, run_id, *rerun)
        if self._current is not None:
            self._current.asked = True
        stream = chat.stream(
            question.text, content="all", model=args.model or None, params=question.overrides,
            history=not args.no_history, meta=meta, replace=rerun,
        )
        session_tools = chat.get_tools()
        if question.tools:  # the exchange takes the tools in force at its first item, below
            chat.set_tools(offered_tools(chat, question))
        try:
            for item in stream:
                show_item(display, item)
        except KeyboardInterrupt:
            # Ctrl-C may land in the display, outside the stream, and this frame keeps `stream`
            # alive as long as the traceback: close it now, so the partial turn is recorded
            # before _finish, and the session's lock is released.
            stream.close()
            self._finish(display, chat, args, fmt, stream, note="interrupted: partial answer kept")
            # An ordinary stop: one line (UsageError is IPython's no-traceback error), which
            # still stops the cell and a Run All.
            raise UsageError("stopped (Ctrl-C)") from None
        except BudgetExceeded as exc:  # the spend guard refused a request (a later tool round too)
            if stream.turns:
                self._finish(display, chat, args, fmt, stream, broken=True)
            kept = "; the exchange so far is kept, marked partial" if stream.turns else ""
            raise UsageError(exc.message + kept) from None
        except LLMChatError as exc:
            # Anything recorded (text, or tool rounds past max_tool_rounds) gets the final
            # bundle, its metadata and footer: the output is finished, the error below it.
            if display.text or stream.turns:
                # The red line below is the one notice; the record says the answer is partial.
                self._finish(display, chat, args, fmt, stream, broken=True)
            message = exc.message + ("; the answer so far is kept, marked partial" if display.text else "")
            self.cell_runs.chat_failed(exc.message)
            display.error(message, self._hint(exc, args.session))
            if getattr(self.shell, "InteractiveTB", None) is not None and self.shell.InteractiveTB.mode == "Verbose":
                raise_clean(exc)  # the user's frames only: ours hold the prompt, the session
            return None
        finally:
            if question.tools:  # --tools is for this cell only
                chat.set_tools(session_tools)
            if stream.at is not None and self._current is not None:  # recorded (partial too)
                self._current.kept.add(chat)
        answer = self._finish(display, chat, args, fmt, stream)
        self._replay_next[chat] = len(chat.get_turns())
        if stream.at is not None:
            after = stream.at + len(stream.turns)
            self._note_run(chat, cell_id, run_id, after, after)
        if args.output:
            self.shell.user_ns[args.output] = answer
        if args.insert:
            self._insert(display.text, cell_id)
        return None

    # -- outputs --------------------------------------------------------------------------------

    def display(self) -> AnswerDisplay:
        if getattr(self.shell, "kernel", None) is None:
            return TerminalDisplay()
        return StreamDisplay(self.settings.display_rate_hz)

    def _note_run(
        self, chat: Any, cell_id: str | None, run_id: str | None, start: int, end: int
    ) -> None:
        """Remember this execution of the cell, and the span its next exchange in ``chat``
        would take."""
        if cell_id is not None and run_id is not None:
            self._runs.setdefault(chat, {})[cell_id] = (run_id, start, end)

    def _hint(self, exc: LLMChatError, session: str) -> str:
        """The error's hint, in a cell user's terms where the library's would not help."""
        env = self.settings.credentials_env
        if isinstance(exc, AuthenticationError) and self.settings.made_from_config(session) and env:
            state = "is set but was refused" if os.environ.get(env) else "is not set"
            return (f"{env} {state}: set {env} before starting "
                    "Jupyter, or %config ChatMagics.credentials_env = 'NAME_OF_YOUR_VARIABLE'")
        if isinstance(exc, StreamError) and exc.hint == StreamError.hint:
            return ""  # the message says whether anything was kept (nothing, when it broke at once)
        return exc.hint

    def _finish(
        self, display: AnswerDisplay, chat: Any, args: Any, fmt: str, stream: Any, note: str | None = None,
        *, broken: bool = False,
    ) -> Any:
        """Final rendering with the turn's metadata; returns the value for -o."""
        # No turns: nothing arrived, so nothing was recorded.
        exchange = stream.turns
        meta = (
            display_metadata(args.session, chat, exchange, recorded=not args.no_history, new=args.new)
            if exchange
            else {}
        )
        display.final(fmt, meta, note=note)
        user = stream.user_turn
        context_note = user.meta.get("context_note") if exchange and user is not None else None
        if context_note:  # the local model left old turns out of this request
            show_line(self.shell, str(context_note))
        if exchange and self.settings.footer:
            self._footer(chat, exchange)
        return output_value(display.text, fmt, complete=note is None and not broken)

    def _dry_run(
        self, args: Any, chat: Any, question: _Question, rerun: tuple[int, int] | None
    ) -> None:
        fresh = args.new or args.no_history
        turns = chat.get_turns()
        at = rerun[0] if rerun is not None else len(turns)
        history = [] if fresh else turns[conversation_start(turns, at):at]
        params = {**chat.provider.params, **question.overrides}
        system = args.system if args.system is not None else chat.system_prompt
        preview = chat.request_preview(
            question.text, model=args.model or None, params=question.overrides,
            history=not fresh, replace=rerun, system_prompt=system or None, source="cell",
        )
        view = ctx.dry_run_text(
            url=chat.provider.display_url, model=args.model or chat.provider.model, params=params,
            system_prompt=system, history=history, text=question.text, preview=preview,
        )
        if question.tools:
            view += "\n--tools, offered for this cell: " + ", ".join(t.name for t in question.tools)
        show_line(self.shell, view)

    def _replay(self, display: AnswerDisplay, chat: Any, args: Any, fmt: str, index: int) -> None:
        """Show a recorded answer again: no request, no spend, history unchanged."""
        turns = chat.get_turns()
        exchange = turns[index:exchange_end(turns, index)]
        user, reply = exchange[0], exchange[-1]
        for t in exchange[1:]:
            for c in t.contents:
                if c.type in ("text", "thinking"):
                    display.fill(c.type, getattr(c, c.type))
                elif c.type == "tool_request":
                    display.tool_request(c.id, c.name, c.arguments, replayed=True)
                elif c.type == "tool_result":
                    display.tool_result(c.id, c.value, c.error, status=c.status, replayed=True)
        meta = display_metadata(args.session, chat, exchange, recorded=True)
        meta[KEY]["replayed"] = True
        display.final(fmt, meta)
        when = reply.started_at or user.started_at
        recorded = when.strftime("%Y-%m-%d %H:%M UTC") if when else "earlier"
        if self.settings.footer:
            self._footer(chat, exchange, replayed_at=recorded)
        else:
            show_line(self.shell, f"replayed (recorded {recorded}), no request")
        if args.output:
            self.shell.user_ns[args.output] = output_value(display.text, fmt)

    def _insert(self, text: str, cell_id: str | None) -> None:
        """``--insert``: the answer's code into the cell below. In JupyterLab the front end
        upserts it (the cell it inserted for this asking cell gets the new code, so asking again
        leaves one cell); elsewhere IPython's ``set_next_input`` (a new cell, or the terminal's
        next prompt). A replayed answer never comes here: it was inserted when it was asked."""
        code = code_block(text)
        if code is None:
            show_line(self.shell, "--insert: the answer has no code block, so no cell was inserted")
            return
        bridge = current_bridge()
        if cell_id is not None and bridge is not None and bridge.insert_code(cell_id, code):
            return
        self.shell.set_next_input(code, replace=False)

    def _footer(self, chat: Any, exchange: list[Any], replayed_at: str | None = None) -> None:
        show_line(self.shell, _spend.exchange_footer(exchange, replayed_at=replayed_at))


# -- helpers --------------------------------------------------------------------------------------


def request_of(chat: Any, model: str | None, question: _Question, history: Any) -> Request:
    """What decides this cell's request after ``history`` (the replay key's inputs)."""
    return Request(
        prompt=question.prompt, text=question.text, history=history, provider=chat.provider.name,
        model=model or chat.provider.model, system_prompt=chat.system_prompt,
        params={**chat.provider.params, **question.overrides},
        tools=offered_tools(chat, question),
        attached=question.attached,
    )


def offered_tools(chat: Any, question: _Question) -> list[Any]:
    """The tools this cell's request offers: the session's and its ``--tools`` (which win a
    name they share)."""
    return list({t.name: t for t in [*chat.get_tools(), *question.tools]}.values())


def _mark_new(chat: Any, index: int, new: bool) -> None:
    """A replayed exchange starts a new conversation exactly when its cell says ``--new`` now
    (its key matched, so nothing above it was sent either way; the cells below follow the mark)."""
    turns = chat.get_turns()
    user = turns[index]
    if (user.meta.get(NEW_KEY) is True) == new:
        return
    meta = {k: v for k, v in user.meta.items() if k != NEW_KEY}
    turns[index] = dataclasses.replace(user, meta={**meta, NEW_KEY: True} if new else meta)
    chat.set_turns(turns)


def _holds(turns: Any, span: tuple[int, int], cell_id: str) -> bool:
    """Whether ``span`` of ``turns`` is an exchange of the cell ``cell_id`` (not an empty place)."""
    return span[0] < span[1] and turns[span[0]].meta.get("cell_id") == cell_id


def parent_ids(shell: Any) -> tuple[str | None, str | None]:
    """The running cell's id (JupyterLab sends it) and its execution's request id."""
    try:
        parent = shell.kernel.get_parent()
    except Exception:
        parent = getattr(shell, "parent_header", None) or {}
    parent = parent or {}
    cid = (parent.get("metadata") or {}).get("cellId")
    msg_id = (parent.get("header") or {}).get("msg_id")
    return (cid if isinstance(cid, str) else None, msg_id if isinstance(msg_id, str) else None)


def show_item(display: AnswerDisplay, item: Any) -> None:
    """One item of ``stream(content="all")`` into the cell's output."""
    kind = item.type
    if kind == "text":
        display.delta("text", item.text)
    elif kind == "thinking":
        display.delta("thinking", item.thinking)
    elif kind == "tool_request":
        display.tool_request(item.id, item.name, item.arguments)
    elif kind == "tool_result":
        display.tool_result(item.id, item.value, item.error, status=item.status,
                            duration=item.duration)
