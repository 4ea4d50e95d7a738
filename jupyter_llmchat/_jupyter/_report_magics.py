"""The reporting magics: ``%chat_usage``, ``%chat_history``, ``%chat_reset``, ``%chat_config``,
``%chat_budget``, ``%chat_panel`` and ``%chat_export``. They read the sessions and the settings
of ``ChatMagics`` (passed in, never looked up in IPython's registry) and send nothing to a
model."""

from __future__ import annotations

import math
import os
import pathlib
import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from .. import _sessions
from .._core._process import token_usage
from .._core._provider import safe_url
from .._core._spend import MAX_BUDGET_TOKENS, MAX_BUDGET_USD, Budget
from .._errors import ConfigurationError, LLMChatError, RecordError
from .._record._export import export_format, export_record
from . import _cellcontext as ctx
from ._bridge import current_bridge, replace_record
from ._display import show_line
from ._prompt import parse_options
from ._report import ConfigView, HistoryView, NoConversation, UsageReport

__all__ = ["ChatReportMagics"]

_SECRET_KEY = re.compile(r"key|token|secret|auth|password|cookie", re.IGNORECASE)


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else _mask(v)) for k, v in value.items()}
    return value


def _existing(name: str | None) -> list[str]:
    names = _sessions.session_names()
    if name is None:
        return names
    if name not in names:
        raise UsageError(f"no session named {name!r} (sessions: {', '.join(names) or 'none yet'})")
    return [name]


@magics_class
class ChatReportMagics(Magics):
    """Usage, history, configuration, budget and the panel of the chat sessions."""

    #: Magics are always registered on a shell (IPython types it Optional).
    shell: Any

    def __init__(self, shell: Any, settings: Any) -> None:
        super().__init__(shell=shell)
        #: The ``ChatMagics`` whose settings %chat_config shows and %chat_reset re-applies.
        self.settings = settings

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
        args = parse_options(self.chat_usage, line)
        names = _existing(args.session)
        spend = None
        if args.all:
            bridge = current_bridge()
            spend = bridge.ledger.to_list() if bridge is not None else token_usage()
        if ctx.has_budget():
            show_line(self.shell, "\n".join(ctx.budget_report()))
        return UsageReport({n: _sessions.session(n) for n in names}, turns=args.turns, spend=spend)

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @argument("-n", type=int, default=None, metavar="N",
              help="Only the last N exchanges (a question and its answer).")
    @line_magic
    def chat_history(self, line: str) -> Any:
        """Show a session's turns."""
        args = parse_options(self.chat_history, line)
        if args.n is not None and args.n < 1:
            raise UsageError("-n must be a positive number")
        names = _sessions.session_names()
        if args.session == "default" and args.session not in names:
            return NoConversation(args.session, names)  # a fresh kernel: nothing asked yet
        (name,) = _existing(args.session)
        return HistoryView(name, _sessions.session(name), last=args.n)

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @argument("--all", action="store_true", help="Reset every session.")
    @line_magic
    def chat_reset(self, line: str) -> None:
        """Forget a session's turns, in the kernel and in the notebook's metadata."""
        args = parse_options(self.chat_reset, line)
        names = _sessions.session_names() if args.all else _existing(args.session)
        for name in names:
            chat = _sessions.session(name)
            if chat.busy:
                raise UsageError(f"session {name!r} is busy answering; stop it first")
            chat.reset()
            self.settings.refresh_session(name)
        if args.all:  # replaces the notebook's record, even one the kernel refused (DESIGN §6)
            replace_record()
        # The metadata lets `jupyter-llmchat consolidate` replay the reset without the extension.
        display(
            {"text/plain": f"reset: {', '.join(names) or 'no sessions'}"},
            raw=True,
            metadata={"jupyter_llmchat": {"reset": names}},
        )

    @line_magic
    def chat_config(self, line: str) -> Any:
        """The effective configuration (secrets masked). Change it with %config ChatMagics.x = ..."""
        if line.strip():
            raise UsageError("%chat_config takes no arguments; use %config ChatMagics.name = value")
        settings = self.settings
        key_set = bool(settings.credentials_env and os.environ.get(settings.credentials_env))
        rows = {
            "base_url": safe_url(settings.base_url) if settings.base_url else "(none: bundled local model)",
            "model": settings.model or "(ask the server)",
            "provider_name": settings.provider_name,
            "system_prompt": settings.system_prompt or "(none)",
            "params": settings.params,
            "api_args": _mask(settings.api_args),
            "api_headers": {k: "***" for k in settings.api_headers},
            "credentials_env": f"{settings.credentials_env} ({'set' if key_set else 'not set'})",
            "default_format": settings.default_format,
            "display_rate_hz": settings.display_rate_hz,
            "record_metadata": settings.record_metadata,
            "tool_approval": settings.tool_approval + (
                f" (always allowed: {', '.join(sorted(settings.approval.always))})"
                if settings.approval.always else ""),
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
        args = parse_options(self.chat_budget, line)
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
        show_line(self.shell, "\n".join(ctx.budget_report()))

    @magic_arguments()
    @argument("-s", "--session", default="default", help="Session name (default: default).")
    @line_magic
    def chat_panel(self, line: str) -> Any:
        """Open the chat panel for a session (JupyterLab's right side panel)."""
        args = parse_options(self.chat_panel, line)
        try:
            _sessions.check_name(args.session)
            from ._widget import panel  # lazy: ipywidgets would double %load_ext's time

            return panel(args.session, context_max_tokens=self.settings.context_max_tokens)
        except LLMChatError as exc:
            raise UsageError(str(exc)) from None

    @magic_arguments()
    @argument("file", metavar="FILE",
              help="FILE.md (Markdown) or FILE.html (one self-contained page).")
    @argument("-s", "--session", help="Only this session (default: every session).")
    @line_magic
    def chat_export(self, line: str) -> None:
        """Write the conversation to a Markdown or self-contained HTML file.

        The record this notebook keeps (the one the JupyterLab extension saves), in the
        notebook's order: tool calls on one line each, thinking folded, the spend at the end.
        The HTML page is inert: no script, nothing fetched, images shown as links. The same
        as `jupyter-llmchat export NOTEBOOK.ipynb -o FILE` on the saved notebook.
        """
        args = parse_options(self.chat_export, line)
        path = pathlib.Path(args.file).expanduser()
        try:
            export_format(path)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
        names = _existing(args.session)
        if not names:
            raise UsageError("nothing to export yet: no session has asked anything")
        bridge = current_bridge()
        if bridge is None:
            raise UsageError("%chat_export needs %load_ext jupyter_llmchat first")
        title = pathlib.Path(bridge.path).stem if bridge.path else None
        try:
            order = bridge.order.cells or None  # the notebook's order, as its cells stand
            out = export_record(bridge.record(), order, path, args.session, title=title)
        except (RecordError, ConfigurationError) as exc:
            raise UsageError(f"the conversation cannot be exported: {str(exc)[:300]}") from None
        except OSError as exc:
            raise UsageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        show_line(self.shell, f"conversation written to {out}")
