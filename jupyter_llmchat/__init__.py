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
    from ._chat import AsyncChatStream, Chat, ChatExchange, ChatStream
    from ._content import content_image_file, content_image_plot, content_image_url
    from ._errors import (
        APIStatusError,
        AuthenticationError,
        BudgetExceeded,
        ConfigurationError,
        LLMChatError,
        ParallelChatError,
        RateLimitError,
        ServerError,
        StreamError,
        TransportError,
    )
    from ._parallel import (
        ParallelResults,
        parallel_chat,
        parallel_chat_structured,
        parallel_chat_text,
    )
    from ._params import params
    from ._presets import (
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
    from ._sessions import session, use
    from ._structured import StructuredOutputError
    from ._tools import Tool, ToolError, ToolRejectError
    from ._turns import (
        ContentImage,
        ContentText,
        ContentThinking,
        ContentToolRequest,
        ContentToolResult,
        Tokens,
        Turn,
    )
    from ._usage import token_usage
    from ._widget import panel

__all__ = [
    "APIStatusError",
    "AsyncChatStream",
    "AuthenticationError",
    "BudgetExceeded",
    "Chat",
    "ChatExchange",
    "ChatStream",
    "ConfigurationError",
    "ContentImage",
    "ContentText",
    "ContentThinking",
    "ContentToolRequest",
    "ContentToolResult",
    "LLMChatError",
    "ParallelChatError",
    "ParallelResults",
    "RateLimitError",
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
    "AsyncChatStream": "_chat",
    "Chat": "_chat",
    "ChatExchange": "_chat",
    "ChatStream": "_chat",
    "content_image_file": "_content",
    "content_image_plot": "_content",
    "content_image_url": "_content",
    "APIStatusError": "_errors",
    "AuthenticationError": "_errors",
    "BudgetExceeded": "_errors",
    "ConfigurationError": "_errors",
    "LLMChatError": "_errors",
    "ParallelChatError": "_errors",
    "RateLimitError": "_errors",
    "ServerError": "_errors",
    "StreamError": "_errors",
    "TransportError": "_errors",
    "ParallelResults": "_parallel",
    "parallel_chat": "_parallel",
    "parallel_chat_structured": "_parallel",
    "parallel_chat_text": "_parallel",
    "params": "_params",
    "chat_deepseek": "_presets",
    "chat_groq": "_presets",
    "chat_llamacpp": "_presets",
    "chat_lmstudio": "_presets",
    "chat_ollama": "_presets",
    "chat_openai": "_presets",
    "chat_openai_compatible": "_presets",
    "chat_openrouter": "_presets",
    "chat_vllm": "_presets",
    "session": "_sessions",
    "use": "_sessions",
    "StructuredOutputError": "_structured",
    "Tool": "_tools",
    "ToolError": "_tools",
    "ToolRejectError": "_tools",
    "ContentImage": "_turns",
    "ContentText": "_turns",
    "ContentThinking": "_turns",
    "ContentToolRequest": "_turns",
    "ContentToolResult": "_turns",
    "Tokens": "_turns",
    "Turn": "_turns",
    "token_usage": "_usage",
    "panel": "_widget",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jupyter_llmchat' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_llmchat``: register the chat magics."""
    from ._magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from ._magics import unload

    unload(ipython)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-llmchat"}]
