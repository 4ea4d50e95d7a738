"""Tool approval in a notebook (DESIGN §3): ``ChatMagics.tool_approval`` = "ask", "auto", "never".

One ``on_tool_request`` callback on the process's tool hooks (``_core._tools.tool_hooks``), so
every call of every ``Chat`` in the kernel passes it, a ``Chat`` the user made included. Under
"ask" the calls of the user's own Python functions and of tools annotated read-only run unasked
(a server the user added is what makes its annotations trusted); the others are asked about in
the cell, through the kernel's stdin: yes, no, or always (this tool name, for the kernel's life,
never recorded). A thread that has its own way to ask (the panel's: Approve / Deny on the call's
line) says so with ``answered_by``; a call from ``parallel_chat``'s own thread is passed to the
cell's, which waits for the run (``run_on_caller``). Nobody can answer where the front end has
no stdin (nbclient, papermill) or on any other thread: the call is refused there, and its
reason, which says how to allow it, is the call's line in the output and the result the model
gets.

``approval_for(tool, policy, ask_servers)`` is the decision alone, for whoever shows or
configures tools (a server added with ``--ask`` marks its tools: they always ask).
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Literal

from .._core._tools import Tool, tool_hooks
from .._core._turns import ContentToolRequest, short_arguments
from .._errors import ToolRejectError

__all__ = ["ANSWERS", "POLICIES", "Decision", "ToolApproval", "answered_by", "approval_for"]

POLICIES = ("ask", "auto", "never")
Decision = Literal["run", "ask", "refuse"]

#: What a prompt takes: yes, no, always (this tool name, for the kernel's life).
ANSWERS = ("yes", "no", "always")

#: Per thread: who answers the approval's questions asked on it (see ``answered_by``).
_answerers = threading.local()


@contextmanager
def answered_by(answer: Callable[[ContentToolRequest], str]) -> Iterator[None]:
    """While in this block, calls on this thread that need approval are asked of ``answer``
    (it returns "yes", "no" or "always"; it may raise ``ToolRejectError`` with a reason)."""
    before = getattr(_answerers, "answer", None)
    _answerers.answer = answer
    try:
        yield
    finally:
        _answerers.answer = before


#: Said in every refusal that someone could lift: how to let calls run without asking.
HOW_TO_ALLOW = '%config ChatMagics.tool_approval = "auto" allows calls'


def approval_for(tool: Tool | None, policy: str, ask_servers: Collection[str] = ()) -> Decision:
    """What the approval does with a call of ``tool`` under ``policy``: "run" it unasked, "ask"
    the user first, or "refuse" it.

    "auto" runs everything, "never" refuses everything. "ask": a tool of an MCP server in
    ``ask_servers``, or of one added with ``ask``, always asks; otherwise a tool annotated
    ``destructiveHint`` asks, a tool annotated ``readOnlyHint`` runs, the user's own functions
    (``tool.server`` None) run and the other servers' tools ask. ``tool`` None (no such tool): "run", since the call fails
    on its own without running anything."""
    if policy == "auto" or tool is None:
        return "run"
    if policy == "never":
        return "refuse"
    # A server added with ``ask`` (``%chat_mcp add NAME --ask``, ``register_mcp_tools_*(ask=True)``)
    # says so on its tools' functions.
    if tool.server is not None and (
        tool.server in ask_servers or getattr(tool.func, "mcp_ask", False) is True
    ):
        return "ask"
    hints = tool.annotations or {}
    if hints.get("destructiveHint") is True:
        return "ask"
    if hints.get("readOnlyHint") is True or tool.server is None:
        return "run"
    return "ask"


class ToolApproval:
    """The kernel's approval: its policy, the servers that ask for every call, the tool names
    answered "always", and the thread that may ask (the one cells run on)."""

    def __init__(self) -> None:
        self.policy: str = "ask"
        self.ask_servers: set[str] = set()
        self.always: set[str] = set()
        self._cell_thread = threading.current_thread()  # made at %load_ext, on the cell's
        self._lock = threading.Lock()
        self._remove: Callable[[], None] | None = None

    def install(self) -> None:
        if self._remove is None:
            self._remove = tool_hooks.on_tool_request(self)

    def uninstall(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None

    def __call__(self, request: ContentToolRequest) -> None:
        """The ``on_tool_request`` callback: returns to run the call, raises to refuse it."""
        decision = approval_for(request.tool, self.policy, self.ask_servers)
        if decision == "run" or (decision == "ask" and request.name in self.always):
            return
        if decision == "refuse":
            raise ToolRejectError(
                'tool calls are turned off here (ChatMagics.tool_approval = "never")'
            )
        answerer = getattr(_answerers, "answer", None)
        if answerer is not None:
            answer = str(answerer(request))
        elif threading.current_thread() is self._cell_thread:
            answer = self._prompt(request)
        else:
            try:  # parallel_chat's thread: asked on the caller's, if that is the cell's
                # Imported here: _parallel brings asyncio (34 more modules at %load_ext) for a
                # call that only a parallel_chat worker makes.
                from .._core._parallel import run_on_caller

                answer = run_on_caller(lambda: self._prompt_on_cell_thread(request))
            except LookupError:
                raise ToolRejectError(
                    "it needs approval and came off the cell's thread; " + HOW_TO_ALLOW
                ) from None
        if answer in ("a", "always"):
            with self._lock:
                self.always.add(request.name)
        elif answer not in ("y", "yes"):
            raise ToolRejectError("the user declined this call")

    def _prompt_on_cell_thread(self, request: ContentToolRequest) -> str:
        if threading.current_thread() is not self._cell_thread:
            raise ToolRejectError(
                "it needs approval and parallel_chat was called off the cell's thread; "
                + HOW_TO_ALLOW
            )
        return self._prompt(request)

    def _prompt(self, request: ContentToolRequest) -> str:
        from IPython.core.error import StdinNotImplementedError  # only when a call asks

        question = (f"Allow the tool call {request.name}({short_arguments(request.arguments)})? "
                    "[y]es / [n]o / [a]lways for this session: ")
        # Looked up at each call: ipykernel sets input() per request, to its input_request on
        # the stdin channel where the front end allows stdin, else to one that raises.
        try:
            answer = builtins.input(question)
        except (StdinNotImplementedError, EOFError, OSError):
            # No stdin: nbclient and papermill say allow_stdin False; a captured stdin (pytest).
            raise ToolRejectError(
                f"it needs approval and nobody can answer (no stdin); {HOW_TO_ALLOW}"
            ) from None
        return str(answer).strip().lower()

