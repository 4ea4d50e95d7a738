"""The Jupyter side of notebook context and spend, kept apart from ``_magics`` so it reads alone.

``ChatMagics`` calls these for ``--with``, ``--dry-run``, replay, the footer, ``%chat_fix`` and
``%chat_budget``; the rules themselves are in the core modules ``_context`` and ``_spend``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from IPython.core.error import UsageError

from .._core._process import process_ledger
from .._core._spend import Budget, RequestPreview, Spent, budget_lines, message_text
from .._core._turns import Turn, exchanges
from ._bridge import current_bridge
from ._context import Attachment, ErrorContext, error_context, summarize
from ._display import show_line

__all__ = [
    "CellRuns",
    "attachments",
    "dry_run_text",
    "get_budget",
    "last_error",
    "set_budget",
    "show_line",
    "spent",
]

_MISSING = object()


def attachments(
    names: str | None, namespace: dict[str, Any], max_tokens: int, *, fingerprint: bool = False
) -> list[Attachment]:
    """Summaries of the ``--with`` names (``fingerprint``: with their content's digest, for the
    replay key); an unknown name is a UsageError (nothing is sent)."""
    if not names:
        return []
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise UsageError("--with needs variable names, e.g. --with df,model")
    out = []
    for name in wanted:
        if not name.isidentifier():
            raise UsageError(f"--with takes variable names separated by commas, not {name!r}")
        value = namespace.get(name, _MISSING)
        if value is _MISSING:
            raise UsageError(f"--with: no variable named {name!r} in the namespace; nothing sent")
        out.append(summarize(name, value, max_tokens, fingerprint=fingerprint))
    return out


def dry_run_text(
    *,
    url: str,
    model: str | None,
    params: dict[str, Any],
    system_prompt: str | None,
    history: Sequence[Turn],
    text: str,
    preview: RequestPreview,
) -> str:
    """What ``--dry-run`` shows: exactly the messages that would go, and the spend guard's
    estimate of that request (``preview``), the numbers a budget is checked against.

    Shown as text/plain only: the history and attachments are untrusted and must not render.
    """
    n_in, max_tokens = preview.spend.input_tokens, preview.spend.max_tokens
    lines = [
        "dry run: nothing sent, nothing recorded",
        f"to: {url}  model: {model or '(ask the server)'}  params: {params or '{}'}",
        f"system prompt: {system_prompt if system_prompt else '(none)'}",
        f"history: {len(history)} turns ({len(exchanges(history))} exchanges, "
        f"{message_text(history):,} chars) sent before the new message",
        "new message (user):",
        text,
        f"estimate: ~{n_in:,} tokens in"
        + (f", up to {max_tokens:,} out" if max_tokens is not None else ""),
    ]
    return "\n".join(lines)


# -- the last error ------------------------------------------------------------------------------


def last_error(shell: Any) -> ErrorContext | None:
    """The kernel's last exception as the shell showed it (``sys.last_value``), if any."""
    exc = getattr(sys, "last_value", None)
    tb = getattr(sys, "last_traceback", None)
    if exc is None:
        return None
    # The shell's compiler names its cells' code as IPython's own tracebacks do: a (label, name)
    # pair such as ("Cell", "In[3]") for a cell's file name, None for any other file.
    format_code_name = getattr(getattr(shell, "compile", None), "format_code_name", None)

    def code_name(filename: str) -> tuple[str, str] | None:
        found = format_code_name(filename) if format_code_name is not None else None
        return found if isinstance(found, tuple) and len(found) == 2 else None

    def is_cell(filename: str) -> bool:
        return code_name(filename) is not None or filename.startswith("<ipython-input-")

    def cell_name(filename: str) -> str:
        found = code_name(filename)
        return f"{found[0]} {found[1]}" if found is not None else "Cell"

    return error_context(exc, tb, is_cell=is_cell, cell_name=cell_name)


class CellRuns:
    """Which cell failed last, and whether it has run cleanly since (``%chat_fix`` asks).

    ``sys.last_value`` is the last *exception*, however old: a ``%%chat`` whose request failed
    raises none, and a cell fixed and run again clears nothing. So a ``post_run_cell`` hook keeps
    the last failed cell (by its id where the front end sends one, else by its source) and marks
    it fixed when that cell later runs without error.
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.count: int | None = None
        #: The failed cell's exception's type name; None for a chat request that failed.
        self.error: str | None = None
        self.chat_error: str | None = None
        self.fixed_at: int | None = None
        self._chat_failed: str | None = None

    def chat_failed(self, message: str) -> None:
        """The running cell's chat request failed (shown as a line, not raised)."""
        self._chat_failed = message

    def post_run_cell(self, result: Any) -> None:
        info = getattr(result, "info", None)
        key = getattr(info, "cell_id", None) or getattr(info, "raw_cell", None)
        error = result.error_in_exec or result.error_before_exec
        chat, self._chat_failed = self._chat_failed, None
        if error is not None or chat is not None:
            name = type(error).__name__ if error is not None else None
            self.key, self.count, self.error, self.chat_error = key, result.execution_count, name, chat
            self.fixed_at = None
        elif key is not None and key == self.key and self.fixed_at is None:
            self.fixed_at = result.execution_count

    @staticmethod
    def _cell(n: int | None) -> str:
        return f"cell In[{n}]" if n is not None else "a cell"

    def refusal(self) -> str | None:
        """Why ``%chat_fix`` should send nothing now, or None to explain ``self.error``."""
        where = self._cell(self.count)
        if self.key is None:
            return None
        if self.fixed_at is not None:
            what = f"{self.error} in {where}" if self.error is not None else f"{where}'s chat error"
            return (f"nothing to fix: the last error ({what}) is from a cell that has since run "
                    f"without error ({self._cell(self.fixed_at)}); nothing sent")
        if self.chat_error is not None:
            return (f"the last failed cell, {where}, is a chat request that failed: {self.chat_error}. "
                    "%chat_fix explains Python errors; the line under that cell says what to do. Nothing sent")
        return None


# -- budget ----------------------------------------------------------------------------------------


def _bridge() -> Any:
    return current_bridge()


def get_budget() -> Budget:
    bridge = _bridge()
    budget = getattr(bridge, "budget", None)
    return budget if isinstance(budget, Budget) else Budget()


def set_budget(budget: Budget) -> None:
    bridge = _bridge()
    if bridge is None:
        raise UsageError("%chat_budget needs the extension loaded: %load_ext jupyter_llmchat")
    bridge.set_budget(budget)  # open panels hear of it (they subscribe to the bridge)


def spent() -> Spent:
    """The notebook's whole spend: its ledger (replaced and reset answers included)."""
    bridge = _bridge()
    if bridge is not None:
        return Spent.of(bridge.ledger.total())
    return Spent.of(process_ledger().total())


def has_budget() -> bool:
    """A budget is set, or the record holds one the kernel could not read (it still holds)."""
    return get_budget().active or getattr(_bridge(), "unreadable_budget", None) is not None


def budget_report() -> list[str]:
    bridge = _bridge()
    return budget_lines(get_budget(), spent(), getattr(bridge, "unreadable_budget", None))
