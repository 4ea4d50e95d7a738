"""The exceptions jupyter_llmchat raises.

One tree, one root::

    LLMChatError
    ├── ConfigurationError        bad option, unknown model, missing extra (also a ValueError)
    │   └── ChatBusyError         a message sent while the chat is still answering another
    ├── TransportError            server unreachable, timeout, connection dropped
    ├── APIStatusError            the server answered with an HTTP error status
    │   ├── AuthenticationError   401, 403, or a 400 that refuses the key
    │   ├── RateLimitError        429
    │   └── ServerError           5xx
    ├── StreamError               the answer's stream broke or could not be decoded
    ├── StructuredOutputError     chat_structured(): the answer does not fit the data model (.raw)
    ├── ToolError                 the tool loop cannot go on (too many rounds, a call cut off)
    ├── ToolRejectError           a tool call refused (by the tool, a callback or the approval)
    ├── BudgetExceeded            the notebook's budget refused a request before it was sent
    │   └── ReplayOnlyError       replay-only mode (CI, docs builds): nothing is ever sent
    ├── ParallelChatError         parallel_chat(on_error="stop"): a prompt failed (keeps .results)
    ├── MCPError                  an MCP server failed to start, ended, or answered an error
    │   └── MCPTimeoutError       an MCP tool call took longer than its timeout
    └── RecordError               a notebook's chat record is not one to read (also a ValueError)

Messages name the URL, the status and a hint; they never carry a key or a header value.
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BudgetExceeded",
    "ChatBusyError",
    "ConfigurationError",
    "LLMChatError",
    "MCPError",
    "MCPTimeoutError",
    "ParallelChatError",
    "RateLimitError",
    "RecordError",
    "ReplayOnlyError",
    "ServerError",
    "StreamError",
    "StructuredOutputError",
    "ToolError",
    "ToolRejectError",
    "TransportError",
]


class LLMChatError(Exception):
    """Root of every error raised by jupyter_llmchat."""

    #: A short, actionable suggestion shown after the message (magics and panel show it too).
    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        self.message = message
        if hint:
            self.hint = hint
        super().__init__(f"{message} ({self.hint})" if self.hint else message)


class ConfigurationError(LLMChatError, ValueError):
    """A wrong option, an unknown model or a missing optional dependency."""


class ChatBusyError(ConfigurationError):
    """A second message was sent while an answer is still streaming: refused, never interleaved.

    A ``%%chat`` cell and the panel share a session; the one that comes second is told to wait."""


class TransportError(LLMChatError):
    """The server could not be reached, timed out, or dropped the connection."""

    hint = "is the server running and is base_url right?"


class APIStatusError(LLMChatError):
    """The server answered with an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        url: str,
        body: str = "",
        hint: str = "",
    ) -> None:
        self.status_code = status_code
        self.url = url
        self.body = body
        super().__init__(message, hint=hint)


class AuthenticationError(APIStatusError):
    """401 or 403 (or a 400 that says so): the credentials were missing, wrong or not allowed."""

    hint = "check credentials: the API key, or what credentials= returns"


class RateLimitError(APIStatusError):
    """429: too many requests, still refused after the retries."""

    hint = "rate limited: wait a little, or lower the request rate"


class ServerError(APIStatusError):
    """5xx: the server failed, still failing after the retries."""

    hint = "the server failed; try again later"


class StreamError(LLMChatError):
    """The streamed answer was cut, malformed, or reported an error mid-stream."""

    hint = "the answer so far is kept and marked partial"


class StructuredOutputError(LLMChatError):
    """The answer is not valid JSON for the requested data model; ``raw`` is the answer's text."""

    hint = "the answer is kept in the history; try again, or a model that follows JSON schemas"

    def __init__(self, message: str, *, raw: str) -> None:
        self.raw = raw
        super().__init__(message)


class ToolError(LLMChatError):
    """The tool loop could not go on (too many rounds in a row)."""

    hint = "the answers so far are kept; raise max_tool_rounds or check the tools' results"


class BudgetExceeded(LLMChatError):
    """The spend guard refused a request before anything was sent (``%chat_budget``).

    Raised by whatever sent it (a cell, the panel, ``parallel_chat``, a ``Chat`` of the user's);
    the message names the budget, what is left and how to raise it."""

    hint = "%chat_budget shows the budget and what is left"


class ReplayOnlyError(BudgetExceeded):
    """Replay-only mode (``JUPYTER_LLMCHAT_REPLAY=only`` or ``ChatMagics.replay = "only"``)
    refused a request: nothing is sent, whoever asks.

    A kind of ``BudgetExceeded`` (a budget of nothing), so every surface that handles a refused
    request (a cell, the panel, ``parallel_chat``) handles this one; the message names the mode
    and, from a cell, what changed since its recorded answer."""

    hint = "replay-only: unset JUPYTER_LLMCHAT_REPLAY (or %config ChatMagics.replay = True) to ask"


class ToolRejectError(LLMChatError):
    """Raise it in a tool, or in an ``on_tool_request`` callback, to refuse a call: the model is
    told ``Tool call rejected. {reason}`` as the call's result, and the result's status is
    "refused". Nothing else stops: the exchange goes on with the model's next answer."""

    def __init__(self, reason: str = "the user refused this call") -> None:
        super().__init__(reason)


class ParallelChatError(LLMChatError):
    """``parallel_chat(..., on_error="stop")``: a prompt failed; the run stopped.

    ``results`` holds what finished (in prompt order, None elsewhere) and ``errors`` maps each
    failed prompt's index to its exception (the first one is also ``__cause__``)."""

    hint = "the finished answers are in .results; on_error=\"continue\" sends every prompt"

    def __init__(self, message: str, *, results: list[Any], errors: dict[int, Exception]) -> None:
        self.results = results
        self.errors = errors
        super().__init__(message)


class MCPError(LLMChatError):
    """An MCP server could not be started or reached, ended, or answered a call with an error.

    The message names the server and the tool, never an env value or a header."""

    hint = "%chat_mcp list shows the servers; add the server again to restart it"


class MCPTimeoutError(MCPError):
    """An MCP tool call got no answer within its timeout (``timeout=``, 60 s by default)."""

    hint = "the server is still connected; raise timeout= if the tool is slow"


class RecordError(LLMChatError, ValueError):
    """A notebook's chat record (``metadata.jupyter_llmchat``) is not a valid schema-1 record.

    Records are untrusted input (DESIGN §9): the message says what is wrong, and the record is
    never written over. A ValueError too, as a bad value read from a file is one."""


def raise_clean(exc: BaseException) -> NoReturn:
    """Raise ``exc`` with none of the frames below the caller in its traceback.

    Those frames (the request body, its headers, the server's answer) may hold a key in their
    local variables, which ``%xmode Verbose`` and ``capture_locals`` print; the message already
    says what failed. This frame is the traceback's last, with only ``exc`` in it."""
    # The lower-level error it was mapped from (and its frames) goes too; a cause set on purpose
    # (``raise ... from err``) stays.
    exc.__context__ = None
    exc.__suppress_context__ = True
    raise exc.with_traceback(None)
