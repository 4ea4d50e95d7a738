"""The ``%%chat`` family of magics.

``ChatMagics`` is a traitlets ``Configurable`` (every ``Magics`` is), so its settings work from
``ipython_config.py`` and ``%config ChatMagics.x = ...``. Sessions live in ``_sessions``; the
answer's display in ``_display``; this module parses, templates and wires them together.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import warnings
import weakref
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    line_magic,
    magics_class,
    no_var_expand,
)
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Dict, Enum, Float, Int, TraitError, Unicode, default, validate

from . import _context, _sessions, _spend
from ._chat import ChatBusyError
from ._display import formatwarning_hook
from ._errors import (
    AuthenticationError,
    BudgetExceeded,
    ConfigurationError,
    LLMChatError,
    StreamError,
    raise_clean,
)

__all__ = ["ChatMagics", "load", "unload"]

FORMATS = ("markdown", "text", "code", "json")
#: The settings a session is built from; a changed one applies to it at its next question.
_SESSION_SETTINGS = (
    "base_url", "model", "system_prompt", "provider_name", "params", "api_args", "api_headers",
    "credentials_env",
)
_SECRET_KEY = re.compile(r"key|token|secret|auth|password|cookie", re.IGNORECASE)


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else _mask(v)) for k, v in value.items()}
    return value


@magics_class
class ChatMagics(Magics):
    """Chat with an OpenAI-compatible server from notebook cells."""

    base_url = Unicode(
        help="Base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1. "
        "Default: $OPENAI_BASE_URL; empty starts the bundled local model."
    ).tag(config=True)
    model = Unicode(
        help="Model name. Default: $OPENAI_MODEL; empty asks the server's /models for its only model."
    ).tag(config=True)
    system_prompt = Unicode(
        "", help="System prompt for new sessions (%%chat --system changes one session's)."
    ).tag(config=True)
    provider_name = Unicode(
        "OpenAI-compatible", help="Provider name shown in usage and cost tables, and used to find prices."
    ).tag(config=True)
    params = Dict(
        help="Model parameters for new sessions, as in jupyter_llmchat.params(): "
        "{'temperature': 0.2, 'max_tokens': 512}."
    ).tag(config=True)
    api_args = Dict(
        help="Extra fields deep-merged into every request body (a None value deletes a field)."
    ).tag(config=True)
    api_headers = Dict(help="Extra HTTP headers sent with every request.").tag(config=True)
    credentials_env = Unicode(
        "OPENAI_API_KEY",
        help="Name of the environment variable holding the API key (read at every request; "
        "the key itself is never stored).",
    ).tag(config=True)
    default_format = Enum(
        FORMATS, "markdown", help="How answers are rendered when %%chat has no -f."
    ).tag(config=True)
    display_rate_hz = Float(
        10.0, help="Most display updates per second while an answer streams."
    ).tag(config=True)
    record_metadata = Bool(
        True, help="Record turns, tokens and cost in the notebook's metadata (needs the JupyterLab extension)."
    ).tag(config=True)
    context_max_tokens = Int(
        2000, help="Most tokens (estimated as characters / 4) of each value attached with "
        "%%chat --with, whatever the value's size."
    ).tag(config=True)
    replay = Bool(
        True, help="Show the recorded answer, with no request, when a %%chat cell is re-run with "
        "the same prompt, history, model, system prompt and params (--refresh asks again)."
    ).tag(config=True)
    footer = Bool(
        True, help="Show a one-line footer under each answer: model, tokens in/out, cost."
    ).tag(config=True)

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("OPENAI_BASE_URL", "")

    @default("model")
    def _default_model(self) -> str:
        return os.environ.get("OPENAI_MODEL", "")

    @validate("params")
    def _validate_params(self, proposal: Any) -> dict[str, Any]:
        from ._params import params

        try:
            return params(**proposal["value"])
        except (ConfigurationError, TypeError) as exc:
            raise TraitError(f"ChatMagics.params: {exc}") from None

    @validate("display_rate_hz")
    def _validate_rate(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0.1 <= value <= 60:
            raise TraitError("ChatMagics.display_rate_hz must be between 0.1 and 60")
        return value

    @validate("base_url")
    def _validate_base_url(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise TraitError("ChatMagics.base_url must be an http(s) URL, e.g. http://127.0.0.1:11434/v1")
        return value

    #: Magics are always registered on a shell (IPython types it Optional).
    shell: Any

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        #: Sessions this object built: name -> (the Chat, the settings it last took).
        self._from_config: dict[str, tuple[Any, str]] = {}
        #: cell id -> (the execution (its request's msg_id) that last sent from that cell, the
        #: history index where that execution's next exchange starts).
        self._runs: dict[str, tuple[str, int]] = {}
        #: Where cells have no id: per session, the index of the next recorded exchange a re-run
        #: notebook may replay (restored sessions start at 0; a fresh question moves it to the end).
        self._replay_next: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        from ._cellcontext import CellRuns

        #: The last failed cell, for %chat_fix (fed by a post_run_cell hook, see load()).
        self.cell_runs = CellRuns()
        _sessions.set_factory(self._make_session, self._refresh_from_config)

    def _session_settings(self) -> str:
        values = [getattr(self, name) for name in _SESSION_SETTINGS]
        return json.dumps(values, sort_keys=True, default=str)

    # -- sessions -----------------------------------------------------------------------------

    def _make_session(self, name: str) -> Any:
        chat = self._configured_chat()
        self._from_config[name] = (chat, self._session_settings())
        return chat

    def _configured_chat(self) -> Any:
        """A Chat made from the settings in force."""
        from ._presets import chat_openai_compatible
        from ._provider import env_credentials

        common: dict[str, Any] = {
            "system_prompt": self.system_prompt or None,
            "params": self.params,
            "api_args": self.api_args,
        }
        if not self.base_url:
            chat = _sessions.local_chat(**common)
        else:
            chat = chat_openai_compatible(
                base_url=self.base_url,
                name=self.provider_name,
                credentials=env_credentials(self.credentials_env) if self.credentials_env else None,
                model=self.model or None,
                api_headers=self.api_headers,
                **common,
            )
        return chat

    def _existing(self, name: str | None) -> list[str]:
        names = _sessions.session_names()
        if name is None:
            return names
        if name not in names:
            raise UsageError(f"no session named {name!r} (sessions: {', '.join(names) or 'none yet'})")
        return [name]

    # -- %%chat -------------------------------------------------------------------------------

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @argument("-m", "--model", help="Model for this cell only.")
    @argument("--system", help="Set the session's system prompt from now on.")
    @argument("-t", "--temperature", type=float, help="Temperature for this cell only (0 to 2).")
    @argument("--max-tokens", type=int, help="Most tokens in this answer.")
    @argument("-o", "--output", metavar="VAR", help="Store the answer in variable VAR.")
    @argument("-f", "--format", choices=FORMATS, metavar="FORMAT",
              help="markdown, text, code or json: how the answer shows, and what -o stores.")
    @argument("--new", action="store_true", help="Start the session's history afresh.")
    @argument("--no-history", action="store_true", help="Send this prompt alone and record nothing.")
    @argument("--with", dest="with_names", metavar="NAME[,NAME...]",
              help="Attach a bounded summary of these variables (DataFrames, arrays, ...).")
    @argument("--dry-run", action="store_true",
              help="Show what would be sent, with a token estimate; send and record nothing.")
    @argument("--refresh", action="store_true",
              help="Ask the server even when a recorded answer could be replayed.")
    # argparse formats help with %, so "%%%%" shows as "%%".
    @argument("prompt", nargs="*", metavar="PROMPT",
              help="The question, for %%%%chat on the line; for %%%%%%%%chat, the cell body.")
    # IPython would expand $name and {expr} in the line before we see it: prompts stay verbatim.
    @no_var_expand
    @line_cell_magic
    def chat(self, line: str, cell: str | None = None) -> Any:
        """Send a prompt to the session's model and stream the answer into the output.

        As a cell magic the cell body is the prompt; as a line magic (%chat ...) the rest of the
        line is. {{ expr }} is replaced by the value of expr in your namespace (\\{{ keeps it
        literal); single braces are left alone. Examples::

            %%chat -t 0 --max-tokens 200
            Explain {{ df.shape }} in one sentence.

            %chat -o answer What is a monad?
        """
        __tracebackhide__ = True  # noqa: F841 - %xmode Verbose shows the user's frames, not ours
        if cell is None:
            args, prompt = _split_line(self.chat, line)
        else:
            args = _parse_options(self.chat, line)
            if args.prompt:
                raise UsageError(
                    f"unexpected text on the %%chat line: {' '.join(args.prompt)!r} "
                    "(the prompt goes in the cell body)"
                )
            prompt = cell
        return self._run(args, prompt)

    def _run(self, args: Any, prompt: str, *, template: bool = True) -> Any:
        __tracebackhide__ = True  # noqa: F841 - as in chat
        from . import _cellcontext as ctx
        from ._params import params as make_params

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
        text = interpolate(prompt, self.shell.user_ns) if template else prompt
        attached = ctx.attachments(args.with_names, self.shell.user_ns, self.context_max_tokens)
        text = _context.attach(text, attached)
        if attached and not args.dry_run:  # first, above the answer (a dry run shows them whole)
            ctx.show_line(self.shell, _context.describe_attachments(attached))
        fmt = args.format or self.default_format
        display = self._display()
        try:
            chat = _sessions.prepare(args.session, on_status=display.status)
        except LLMChatError as exc:
            raise UsageError(str(exc)) from None
        if chat.busy:
            raise UsageError(
                f"session {args.session!r} is busy answering (in the chat panel?): "
                "wait for it, or stop it there"
            )
        cell_id, run_id = _parent_ids(self.shell)
        from ._bridge import missing_extension_note

        if (note := missing_extension_note(cell_id)) is not None:  # once: JupyterLab, no extension
            ctx.show_line(self.shell, note)
        # A new execution of a cell replaces what the cell's earlier run left; a second %chat
        # line of the same execution comes after the first (both exchanges are kept, in order).
        run = self._runs.get(cell_id) if cell_id is not None else None
        same_run = run is not None and run_id is not None and run[0] == run_id
        if same_run:
            assert run is not None
            nxt = run[1]
            turns = chat.get_turns()
            rerun = nxt if nxt < len(turns) and turns[nxt].meta.get("cell_id") == cell_id else None
        else:
            rerun = _rerun_index(chat, cell_id)
        if args.dry_run:
            return self._dry_run(args, chat, text, overrides, rerun)
        if args.new:
            chat.reset()
            self._refresh_from_config(args.session)
            chat = _sessions.prepare(args.session, on_status=display.status)
        if args.system is not None:
            chat.system_prompt = args.system
        key = _request_key(chat, args.model, overrides)
        if args.new or args.no_history:
            rerun = None
        # A notebook cell replays only its own recorded exchange. Where cells have no id
        # (nbclient, terminal IPython), the notebook is taken in order: the next recorded one.
        at = rerun if cell_id is not None else self._replay_next.get(chat, 0)
        if self.replay and not args.refresh and not args.no_history and at is not None:
            found = _spend.find_replay(chat.get_turns(), text, at=at, **key)
            if found is not None:
                end = _exchange_end(chat.get_turns(), found)
                self._replay_next[chat] = end
                self._note_run(cell_id, run_id, end)
                return self._replay(display, chat, args, fmt, found)
        past = [] if args.no_history else chat.get_turns()[:rerun]
        meta = {"cell_id": cell_id, "source": "cell",
                "request_hash": _spend.request_hash(text, past, **key)}
        # Until this answer is in, a second %chat line of this execution goes to the end.
        self._note_run(cell_id, run_id, len(chat.get_turns()))
        stream = chat.stream(
            text, content="all", model=args.model or None, params=overrides,
            history=not args.no_history, meta=meta, replace_from=rerun,
        )
        try:
            for item in stream:
                _show_item(display, item)
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
        answer = self._finish(display, chat, args, fmt, stream)
        self._replay_next[chat] = len(chat.get_turns())
        self._note_run(cell_id, run_id, len(chat.get_turns()))
        if args.output:
            self.shell.user_ns[args.output] = answer
        return None

    def _note_run(self, cell_id: str | None, run_id: str | None, next_turn: int) -> None:
        """Remember this execution of the cell, and where its next exchange would start."""
        if cell_id is not None and run_id is not None:
            self._runs[cell_id] = (run_id, next_turn)

    def _hint(self, exc: LLMChatError, session: str) -> str:
        """The error's hint, in a cell user's terms where the library's would not help."""
        made = self._from_config.get(session)
        ours = made is not None and made[0] is _sessions.sessions().get(session)
        if isinstance(exc, AuthenticationError) and ours and self.credentials_env:
            state = "is set but was refused" if os.environ.get(self.credentials_env) else "is not set"
            return (f"{self.credentials_env} {state}: set {self.credentials_env} before starting "
                    "Jupyter, or %config ChatMagics.credentials_env = 'NAME_OF_YOUR_VARIABLE'")
        if isinstance(exc, StreamError) and exc.hint == StreamError.hint:
            return ""  # the message says whether anything was kept (nothing, when it broke at once)
        return exc.hint

    def _finish(
        self, display: Any, chat: Any, args: Any, fmt: str, stream: Any, note: str | None = None,
        *, broken: bool = False,
    ) -> Any:
        """Final rendering with the turn's metadata; returns the value for -o."""
        from ._metadata import display_metadata

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
            from . import _cellcontext as ctx

            ctx.show_line(self.shell, str(context_note))
        if exchange and self.footer:
            self._footer(chat, exchange)
        text = display.text
        if fmt == "code":
            return first_code_block(text)
        if fmt == "json" and note is None and not broken:
            try:
                return json.loads(first_code_block(text) if "```" in text else text)
            except ValueError:
                raise UsageError("-f json: the answer is not valid JSON (it is kept in the history)") from None
        return text

    # -- notebook context and spend (--with, --dry-run, replay, footer) ----------------------

    def _dry_run(self, args: Any, chat: Any, text: str, overrides: dict[str, Any], rerun: int | None) -> None:
        from . import _cellcontext as ctx

        fresh = args.new or args.no_history
        history = [] if fresh else chat.get_turns()[:rerun]
        params = {**chat.provider.params, **overrides}
        view = ctx.dry_run_text(
            url=chat.provider.display_url, model=args.model or chat.provider.model, params=params,
            system_prompt=args.system if args.system is not None else chat.system_prompt,
            history=history, text=text, max_tokens=params.get("max_tokens"),
        )
        ctx.show_line(self.shell, view)

    def _replay(self, display: Any, chat: Any, args: Any, fmt: str, index: int) -> None:
        """Show a recorded answer again: no request, no spend, history unchanged."""
        from ._metadata import KEY, display_metadata

        turns = chat.get_turns()
        exchange = turns[index:_exchange_end(turns, index)]
        user, reply = exchange[0], exchange[-1]
        for t in exchange[1:]:
            for c in t.contents:
                if c.type in ("text", "thinking"):
                    display.fill(c.type, getattr(c, c.type))
                elif c.type == "tool_request":
                    display.tool_request(c.id, c.name, c.arguments, show=False)
                elif c.type == "tool_result":
                    display.tool_result(c.id, c.value, c.error, show=False)
        meta = display_metadata(args.session, chat, exchange, recorded=True)
        meta[KEY]["replayed"] = True
        display.final(fmt, meta)
        when = reply.started_at or user.started_at
        recorded = when.strftime("%Y-%m-%d %H:%M UTC") if when else "earlier"
        if self.footer:
            self._footer(chat, exchange, replayed_at=recorded)
        else:
            from . import _cellcontext as ctx

            ctx.show_line(self.shell, f"replayed (recorded {recorded}), no request")
        if args.output:
            self.shell.user_ns[args.output] = _output_value(display.text, fmt)

    def _footer(self, chat: Any, exchange: list[Any], replayed_at: str | None = None) -> None:
        from . import _cellcontext as ctx

        tokens, cost, requests = _spend.exchange_spend(exchange)
        line = _spend.footer(exchange[-1].model, tokens, cost, local=_sessions.is_local(chat),
                             replayed_at=replayed_at, requests=requests)
        ctx.show_line(self.shell, line)

    def _display(self) -> Any:
        from ._display import StreamDisplay, TerminalDisplay

        if getattr(self.shell, "kernel", None) is None:
            return TerminalDisplay()
        return StreamDisplay(self.display_rate_hz)

    def _refresh_from_config(self, name: str) -> None:
        """Apply the settings changed since a configuration-made session last took them.

        Run before each question (and after a reset), in place: the session stays the same
        Chat, so a handle from ``session()`` keeps working and its turns, tools and listeners
        stay (DESIGN §2). A session restored from the notebook at ``%load_ext`` so picks up the
        ``%config`` lines that follow. The system prompt follows the setting only when the
        setting changed (a ``%%chat --system`` stays until then). A Chat given to ``use()`` is
        the user's: never changed.
        """
        made = self._from_config.get(name)
        chat = _sessions.sessions().get(name)
        settings = self._session_settings()
        if made is None or chat is not made[0] or made[1] == settings:
            return
        before = dict(zip(_SESSION_SETTINGS, json.loads(made[1])))
        now = dict(zip(_SESSION_SETTINGS, json.loads(settings)))
        if any(before[k] != now[k] for k in _SESSION_SETTINGS if k != "system_prompt"):
            try:
                chat.set_provider(self._configured_chat().provider)
            except ChatBusyError:
                return  # answering (in the panel): its next question takes them
        if before["system_prompt"] != now["system_prompt"]:
            chat.system_prompt = self.system_prompt or None
        self._from_config[name] = (chat, settings)

    # -- reports ------------------------------------------------------------------------------

    @magic_arguments()
    @argument("-s", "--session", help="Only this session.")
    @argument("--turns", action="store_true", help="List every answer, not just totals.")
    @argument("--all", action="store_true",
              help="Add the notebook's whole spend: replaced, reset and --no-history answers too.")
    @line_magic
    def chat_usage(self, line: str) -> Any:
        """Tokens (input, output, cached) and cost per session and model, with totals.

        Unknown numbers show as n/a, never 0. Includes turns restored from the notebook.
        """
        from ._report import UsageReport

        args = _parse_options(self.chat_usage, line)
        names = self._existing(args.session)
        spend = None
        if args.all:
            from ._bridge import current_bridge
            from ._usage import token_usage

            bridge = current_bridge()
            spend = bridge.ledger.to_list() if bridge is not None else token_usage()
        from . import _cellcontext as ctx

        if ctx.has_budget():
            ctx.show_line(self.shell, "\n".join(ctx.budget_report()))
        return UsageReport({n: _sessions.session(n) for n in names}, turns=args.turns, spend=spend)

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @argument("-n", type=int, default=None, metavar="N",
              help="Only the last N exchanges (a question and its answer).")
    @line_magic
    def chat_history(self, line: str) -> Any:
        """Show a session's turns."""
        from ._report import HistoryView

        args = _parse_options(self.chat_history, line)
        if args.n is not None and args.n < 1:
            raise UsageError("-n must be a positive number")
        names = _sessions.session_names()
        if args.session == "default" and args.session not in names:
            from ._report import NoConversation

            return NoConversation(args.session, names)  # a fresh kernel: nothing asked yet
        (name,) = self._existing(args.session)
        return HistoryView(name, _sessions.session(name), last=args.n)

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @argument("--all", action="store_true", help="Reset every session.")
    @line_magic
    def chat_reset(self, line: str) -> None:
        """Forget a session's turns, in the kernel and in the notebook's metadata."""
        args = _parse_options(self.chat_reset, line)
        names = _sessions.session_names() if args.all else self._existing(args.session)
        for name in names:
            chat = _sessions.session(name)
            if chat.busy:
                raise UsageError(f"session {name!r} is busy answering; stop it first")
            chat.reset()
            self._refresh_from_config(name)
        if args.all:  # replaces the notebook's record, even one the kernel refused (DESIGN §6)
            from ._bridge import replace_record

            replace_record()
        from IPython.display import display

        # The metadata lets `jupyter-llmchat consolidate` replay the reset without the extension.
        display(
            {"text/plain": f"reset: {', '.join(names) or 'no sessions'}"},
            raw=True,
            metadata={"jupyter_llmchat": {"reset": names}},
        )

    @line_magic
    def chat_config(self, line: str) -> Any:
        """The effective configuration (secrets masked). Change it with %config ChatMagics.x = ..."""
        from ._report import ConfigView

        if line.strip():
            raise UsageError("%chat_config takes no arguments; use %config ChatMagics.name = value")
        from ._provider import safe_url

        key_set = bool(self.credentials_env and os.environ.get(self.credentials_env))
        rows = {
            "base_url": safe_url(self.base_url) if self.base_url else "(none: bundled local model)",
            "model": self.model or "(ask the server)",
            "provider_name": self.provider_name,
            "system_prompt": self.system_prompt or "(none)",
            "params": self.params,
            "api_args": _mask(self.api_args),
            "api_headers": {k: "***" for k in self.api_headers},
            "credentials_env": f"{self.credentials_env} ({'set' if key_set else 'not set'})",
            "default_format": self.default_format,
            "display_rate_hz": self.display_rate_hz,
            "record_metadata": self.record_metadata,
        }
        sessions = {
            name: f"{chat.provider.name} {chat.provider.model or '(auto)'} at {chat.provider.display_url}, "
            f"{len(chat.get_turns())} turns"
            for name, chat in _sessions.sessions().items()
        }
        note = (
            "A changed setting applies to the sessions made from these settings at their next "
            "question, in place (turns and tools kept); a Chat given to use() keeps its own."
        )
        return ConfigView(rows, sessions, note)

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @argument("-o", "--output", metavar="VAR", help="Store the fixed cell (the answer's code block) in VAR.")
    @line_magic
    def chat_fix(self, line: str) -> Any:
        """Ask the model to explain the last error and give a fixed cell.

        Sends the exception (type, message, your own frames) and the source of the cell that
        raised it; the answer streams like %%chat. Nothing is sent when there was no error.
        """
        from . import _cellcontext as ctx

        args = _parse_options(self.chat_fix, line)
        refusal = self.cell_runs.refusal()
        if refusal is not None:  # the last failed cell was fixed since, or was a chat request
            ctx.show_line(self.shell, refusal)
            return None
        err = ctx.last_error(self.shell)
        if err is None:
            ctx.show_line(self.shell, "no error yet: %chat_fix explains the last exception of this kernel")
            return None
        options = "-s " + shlex.quote(args.session)
        if args.output:
            options += " -f code -o " + shlex.quote(args.output)
        chat_args = _parse_options(self.chat, options)
        return self._run(chat_args, _context.fix_prompt(err), template=False)

    @magic_arguments()
    @argument("usd", nargs="?", type=float, help="Spend limit in USD for this notebook.")
    @argument("--tokens", type=int, help="Token limit (input + output) for servers with no known price.")
    @argument("--off", action="store_true", help="Remove the budget.")
    @line_magic
    def chat_budget(self, line: str) -> None:
        """The notebook's spend limit, kept in its record; shows what is spent and left.

        Every request of this kernel (a %%chat cell and each of its tool rounds, %chat_fix, the
        chat panel, session().chat(), parallel_chat, a Chat you made) whose worst case (input
        estimate + max_tokens at the known price, with the requests in flight) would pass it is
        refused before anything is sent. %chat_budget alone shows it.
        """
        import math

        from . import _cellcontext as ctx
        from ._spend import MAX_BUDGET_TOKENS, MAX_BUDGET_USD, Budget

        args = _parse_options(self.chat_budget, line)
        if args.off and (args.usd is not None or args.tokens is not None):
            raise UsageError("%chat_budget --off takes no amount")
        if args.usd is not None and (not math.isfinite(args.usd) or not 0 <= args.usd <= MAX_BUDGET_USD):
            raise UsageError(f"the budget must be an amount in USD from 0 to {MAX_BUDGET_USD:,.0f}, "
                             "e.g. %chat_budget 0.50")
        if args.tokens is not None and not 0 <= args.tokens <= MAX_BUDGET_TOKENS:
            raise UsageError(f"--tokens must be a number from 0 to {MAX_BUDGET_TOKENS:,}")
        if args.off:
            ctx.set_budget(Budget())
        elif args.usd is not None or args.tokens is not None:
            old = ctx.get_budget()
            ctx.set_budget(Budget(
                args.usd if args.usd is not None else old.usd,
                args.tokens if args.tokens is not None else old.tokens,
            ))
        ctx.show_line(self.shell, "\n".join(ctx.budget_report()))

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @line_magic
    def chat_panel(self, line: str) -> Any:
        """Open the chat panel for a session (JupyterLab's right side panel)."""
        args = _parse_options(self.chat_panel, line)
        try:
            _sessions.check_name(args.session)
            from ._widget import panel

            return panel(args.session)
        except LLMChatError as exc:
            raise UsageError(str(exc)) from None


#: Names IPython's own namespace needs: -o over them would break the shell.
_SHELL_OWN = frozenset({"In", "Out", "get_ipython", "exit", "quit"})


def check_output_name(name: str) -> None:
    """Refuse (UsageError) an ``-o`` name that is no variable name, or that would hide a Python
    builtin, a keyword or IPython's own names: ``-o print`` would silently break ``print()``."""
    import builtins
    import keyword

    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"-o needs a variable name, not {name!r}")
    if name in _SHELL_OWN or hasattr(builtins, name):
        whose = "IPython's" if name in _SHELL_OWN else "Python's built-in"
        raise UsageError(f"-o {name} would hide {whose} {name!r}: pick another name, e.g. -o {name}_answer")


def interpolate(prompt: str, namespace: dict[str, Any]) -> str:
    """Replace ``{{ expr }}`` by ``str(eval(expr, namespace))``; ``\\{{`` stays a literal ``{{``.

    The expression ends at the first ``}}`` outside its own brackets and strings, so
    ``{{ {'a': {'b': 1}} }}`` works. A ``{{`` that is never closed is left as it is.
    """
    out: list[str] = []
    pos = 0
    while (start := prompt.find("{{", pos)) != -1:
        if start > 0 and prompt[start - 1] == "\\":
            out.append(prompt[pos:start - 1] + "{{")
            pos = start + 2
            continue
        end = _expression_end(prompt, start + 2)
        if end is None:
            break
        out.append(prompt[pos:start])
        out.append(_evaluate(prompt[start + 2:end], namespace))
        pos = end + 2
    out.append(prompt[pos:])
    return "".join(out)


def _expression_end(s: str, k: int) -> int | None:
    """Index of the ``}}`` that closes the expression starting at ``s[k]``, or None."""
    depth = 0
    n = len(s)
    while k < n:
        c = s[k]
        if c in "\"'":
            quote = s[k:k + 3] if s[k:k + 3] in ('"""', "'''") else c
            k += len(quote)
            while k < n and not s.startswith(quote, k):
                k += 2 if s[k] == "\\" else 1
            if k >= n:
                return None
            k += len(quote)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0 and s.startswith("}}", k):
                return k
            depth = max(0, depth - 1)
        k += 1
    return None


def _evaluate(source: str, namespace: dict[str, Any]) -> str:
    expr = source.strip()
    if not expr:
        raise UsageError("empty {{ }} in the prompt")
    try:
        return str(eval(expr, namespace))  # noqa: S307 - the user's own expression in their kernel
    except Exception as exc:
        raise UsageError(f"{{{{ {expr} }}}} failed: {type(exc).__name__}: {exc}") from None


def _request_key(chat: Any, model: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """What, besides the prompt and history, decides a request (the replay key's inputs)."""
    return {
        "provider": chat.provider.name,
        "model": model or chat.provider.model,
        "system_prompt": chat.system_prompt,
        "params": {**chat.provider.params, **overrides},
    }


def _output_value(text: str, fmt: str) -> Any:
    """The -o value of a replayed answer, as _finish makes it for a fresh one."""
    if fmt == "code":
        return first_code_block(text)
    if fmt == "json":
        try:
            return json.loads(first_code_block(text) if "```" in text else text)
        except ValueError:
            raise UsageError("-f json: the answer is not valid JSON") from None
    return text


_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


def first_code_block(text: str) -> str:
    m = _FENCE.search(text)
    return m.group(1).rstrip("\n") if m else text.strip()


_VALUE_FLAGS = {"-s", "--session", "-m", "--model", "--system", "-t", "--temperature",
                "--max-tokens", "-o", "--output", "-f", "--format", "--with"}
_TOKEN = re.compile(r"\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*'|\S+)")


def _split_line(func: Any, line: str) -> tuple[Any, str]:
    """Split ``%chat [options] prompt``: options up front, the rest verbatim (quotes and all)."""
    opts: list[str] = []
    pos = 0
    while True:
        m = _TOKEN.match(line, pos)
        if not m:
            break
        tok = m.group(1)
        if tok == "--":
            pos = m.end()
            break
        if not tok.startswith("-") or len(tok) == 1 or re.match(r"^-\d", tok):
            break
        opts.append(tok)
        pos = m.end()
        if tok in _VALUE_FLAGS:
            m2 = _TOKEN.match(line, pos)
            if m2:
                opts.append(m2.group(1))
                pos = m2.end()
    args = _parse_options(func, " ".join(opts))
    return args, line[pos:].strip()


def _parse_options(func: Any, line: str) -> Any:
    """Parse a magic's options with shell quoting: ``--system "Be terse."`` gives ``Be terse.``.

    IPython's ``parse_argstring`` splits the non-POSIX way, which keeps the quotes in the value
    and raises ValueError on an unclosed one; both are user mistakes here, so UsageError.
    """
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot read the options {line.strip()!r}: {exc}") from None
    return func.parser.parse_args(argv)

def _rerun_index(chat: Any, cell_id: str | None) -> int | None:
    """Where this cell's earlier exchange starts in the history, if it ran before.

    A cell run again (or "Restart Kernel and Run All" after the history was restored from the
    notebook) replaces its exchange and what followed it, so the history matches the
    notebook read top to bottom instead of growing a copy at every run.
    """
    if not cell_id:
        return None
    for i, t in enumerate(chat.get_turns()):
        if t.role == "user" and t.meta.get("cell_id") == cell_id:
            return i
    return None


def _parent_ids(shell: Any) -> tuple[str | None, str | None]:
    """The running cell's id (JupyterLab sends it) and its execution's request id."""
    try:
        parent = shell.kernel.get_parent()
    except Exception:
        parent = getattr(shell, "parent_header", None) or {}
    parent = parent or {}
    cid = (parent.get("metadata") or {}).get("cellId")
    msg_id = (parent.get("header") or {}).get("msg_id")
    return (cid if isinstance(cid, str) else None, msg_id if isinstance(msg_id, str) else None)


_CHAT_LINE = re.compile(r"^([ \t]*)%chat[ \t]+(\S.*?)[ \t]*(\r?\n)?$", re.DOTALL)


def protect_questions(lines: list[str]) -> list[str]:
    """An input transformer: ``%chat What is X?`` stays a question, not IPython's help syntax.

    IPython reads any line ending in ``?`` as a help request (``Object `X?` not found``).
    Registered among the cleanup transformers at ``%load_ext``, which run before that, it turns
    such a ``%chat`` line into the call IPython would make for it. A ``%%chat`` cell is left to
    IPython: its body is not Python and its last line never reaches the help syntax.
    """
    if not lines or lines[0].lstrip().startswith("%%"):
        return lines
    out = []
    for line in lines:
        m = _CHAT_LINE.match(line)
        if m and m.group(2).endswith("?"):
            line = f"{m.group(1)}get_ipython().run_line_magic('chat', {m.group(2)!r}){m.group(3) or ''}"
        out.append(line)
    return out


def load(ipython: Any) -> None:
    # The package's warnings show in the cell as one line, without our file paths.
    warnings.formatwarning = formatwarning_hook(warnings.formatwarning)
    magics = ChatMagics(shell=ipython)
    ipython.register_magics(magics)
    ipython.events.register("post_run_cell", magics.cell_runs.post_run_cell)
    _sessions.registry.magics[ipython] = magics
    if protect_questions not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(protect_questions)
    from ._bridge import start_bridge

    start_bridge(ipython, magics)


def unload(ipython: Any) -> None:
    magics = _sessions.registry.magics.pop(ipython, None)
    original = getattr(warnings.formatwarning, "_llmchat_original", None)
    if original is not None:
        warnings.formatwarning = original
    if protect_questions in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(protect_questions)
    if magics is not None:
        ipython.events.unregister("post_run_cell", magics.cell_runs.post_run_cell)
        _sessions.set_factory(None)
        for kind in ("line", "cell"):
            for name in ("chat", "chat_usage", "chat_history", "chat_reset", "chat_config", "chat_panel",
                         "chat_fix", "chat_budget"):
                ipython.magics_manager.magics[kind].pop(name, None)


def _show_item(display: Any, item: Any) -> None:
    """One item of ``stream(content="all")`` into the cell's output."""
    kind = item.type
    if kind == "text":
        display.delta("text", item.text)
    elif kind == "thinking":
        display.delta("thinking", item.thinking)
    elif kind == "tool_request":
        display.tool_request(item.id, item.name, item.arguments)
    elif kind == "tool_result":
        display.tool_result(item.id, item.value, item.error)


def _exchange_end(turns: Any, start: int) -> int:
    """Index after the exchange whose prompt is ``turns[start]``: its tool rounds (assistant
    turns, and user turns holding only tool results) and its answer."""
    end = start + 1
    while end < len(turns):
        t = turns[end]
        if t.role == "user" and not (t.contents and all(c.type == "tool_result" for c in t.contents)):
            break
        end += 1
    return end
