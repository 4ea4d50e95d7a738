"""Chat with any OpenAI-compatible server from Python and Jupyter.

``%load_ext jupyter_llmchat`` adds the ``%%chat`` magics; ``chat_openai_compatible()`` is the
Python API (a port of R's ellmer). Names are imported on first use, so ``import jupyter_llmchat``
costs next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from ._core._chat import AsyncChatStream, Chat, ChatExchange, ChatStream
    from ._core._content import content_image_file, content_image_plot, content_image_url
    from ._core._parallel import (
        ParallelResults,
        parallel_chat,
        parallel_chat_structured,
        parallel_chat_text,
    )
    from ._core._params import params
    from ._core._presets import (
        chat_deepseek,
        chat_groq,
        chat_llamacpp,
        chat_lmstudio,
        chat_ollama,
        chat_openai,
        chat_openai_compatible,
        chat_openrouter,
        chat_vllm,
    )
    from ._core._process import token_usage
    from ._core._tools import Tool
    from ._core._turns import (
        ContentImage,
        ContentText,
        ContentThinking,
        ContentToolRequest,
        ContentToolResult,
        Tokens,
        Turn,
    )
    from ._errors import (
        APIStatusError,
        AuthenticationError,
        BudgetExceeded,
        ChatBusyError,
        ConfigurationError,
        LLMChatError,
        MCPError,
        MCPTimeoutError,
        ParallelChatError,
        RateLimitError,
        ReplayOnlyError,
        ServerError,
        StreamError,
        StructuredOutputError,
        ToolError,
        ToolRejectError,
        TransportError,
    )
    from ._jupyter._widget import panel
    from ._sessions import session, use

__all__ = [
    "APIStatusError",
    "AsyncChatStream",
    "AuthenticationError",
    "BudgetExceeded",
    "Chat",
    "ChatBusyError",
    "ChatExchange",
    "ChatStream",
    "ConfigurationError",
    "ContentImage",
    "ContentText",
    "ContentThinking",
    "ContentToolRequest",
    "ContentToolResult",
    "LLMChatError",
    "MCPError",
    "MCPTimeoutError",
    "ParallelChatError",
    "ParallelResults",
    "RateLimitError",
    "ReplayOnlyError",
    "ServerError",
    "StreamError",
    "StructuredOutputError",
    "Tokens",
    "Tool",
    "ToolError",
    "ToolRejectError",
    "TransportError",
    "Turn",
    "__version__",
    "chat_deepseek",
    "chat_groq",
    "chat_llamacpp",
    "chat_lmstudio",
    "chat_ollama",
    "chat_openai",
    "chat_openai_compatible",
    "chat_openrouter",
    "chat_vllm",
    "content_image_file",
    "content_image_plot",
    "content_image_url",
    "load_ipython_extension",
    "panel",
    "parallel_chat",
    "parallel_chat_structured",
    "parallel_chat_text",
    "params",
    "session",
    "token_usage",
    "unload_ipython_extension",
    "use",
]

_LAZY = {
    "AsyncChatStream": "_core._chat",
    "Chat": "_core._chat",
    "ChatExchange": "_core._chat",
    "ChatStream": "_core._chat",
    "content_image_file": "_core._content",
    "content_image_plot": "_core._content",
    "content_image_url": "_core._content",
    "APIStatusError": "_errors",
    "AuthenticationError": "_errors",
    "BudgetExceeded": "_errors",
    "ChatBusyError": "_errors",
    "ConfigurationError": "_errors",
    "LLMChatError": "_errors",
    "MCPError": "_errors",
    "MCPTimeoutError": "_errors",
    "ParallelChatError": "_errors",
    "RateLimitError": "_errors",
    "ReplayOnlyError": "_errors",
    "ServerError": "_errors",
    "StreamError": "_errors",
    "StructuredOutputError": "_errors",
    "ToolError": "_errors",
    "ToolRejectError": "_errors",
    "TransportError": "_errors",
    "ParallelResults": "_core._parallel",
    "parallel_chat": "_core._parallel",
    "parallel_chat_structured": "_core._parallel",
    "parallel_chat_text": "_core._parallel",
    "params": "_core._params",
    "chat_deepseek": "_core._presets",
    "chat_groq": "_core._presets",
    "chat_llamacpp": "_core._presets",
    "chat_lmstudio": "_core._presets",
    "chat_ollama": "_core._presets",
    "chat_openai": "_core._presets",
    "chat_openai_compatible": "_core._presets",
    "chat_openrouter": "_core._presets",
    "chat_vllm": "_core._presets",
    "session": "_sessions",
    "use": "_sessions",
    "Tool": "_core._tools",
    "ContentImage": "_core._turns",
    "ContentText": "_core._turns",
    "ContentThinking": "_core._turns",
    "ContentToolRequest": "_core._turns",
    "ContentToolResult": "_core._turns",
    "Tokens": "_core._turns",
    "Turn": "_core._turns",
    "token_usage": "_core._process",
    "panel": "_jupyter._widget",
}


def _notebook_display() -> Any:
    """IPython's ``display`` in a Jupyter kernel, else None: parallel_chat's progress line is a
    notebook output there. The core imports no Jupyter code, so the package wires this in."""
    from ._jupyter._display import kernel_display  # lazy: only once a progress line shows

    return kernel_display()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jupyter_llmchat' has no attribute {name!r}")
    loaded = importlib.import_module(f".{module}", __name__)
    if module == "_core._parallel":
        setattr(loaded, "notebook_display", _notebook_display)  # noqa: B010 - a module loaded by name
    value = getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_llmchat``: register the chat magics."""
    from ._jupyter._magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from ._jupyter._magics import unload

    unload(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-llmchat"}]
