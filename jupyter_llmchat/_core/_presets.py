"""``chat_openai_compatible()`` and the provider presets: thin functions over one class.

Each preset only sets the base URL, the display name, the environment variable holding the key,
the genai-prices provider id and the provider's quirks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Union

from .._errors import ConfigurationError
from ._chat import Chat, Echo
from ._provider import Credentials, CredentialValue, OpenAICompatible, credentials_from

__all__ = [
    "chat_deepseek",
    "chat_groq",
    "chat_llamacpp",
    "chat_lmstudio",
    "chat_ollama",
    "chat_openai",
    "chat_openai_compatible",
    "chat_openrouter",
    "chat_vllm",
]

CredentialsArg = Union[str, Callable[[], CredentialValue], None]


def _credentials(
    api_key: str | None, credentials: CredentialsArg, env_var: str | None, *, stacklevel: int
) -> Credentials | None:
    if api_key is not None:
        warnings.warn(
            "api_key is deprecated; use credentials= (a str, or a function returning one)",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        if credentials is None:
            credentials = api_key
    return credentials_from(credentials, env_var)


def _make(
    *,
    base_url: str,
    name: str,
    system_prompt: str | None,
    api_key: str | None,
    credentials: CredentialsArg,
    model: str | None,
    params: Mapping[str, Any] | None,
    api_args: Mapping[str, Any] | None,
    api_headers: Mapping[str, str | None] | None,
    echo: Echo | None,
    env_var: str | None,
    price_provider: str | None,
    price_lookup: bool = False,
    drop_params: frozenset[str] = frozenset(),
    timeout: float | None = None,
) -> Chat:
    if params is not None and not isinstance(params, Mapping):
        raise ConfigurationError("params must come from params(...) or be a dict")
    for label, value in (("api_args", api_args), ("api_headers", api_headers)):
        if value is not None and not isinstance(value, Mapping):
            raise ConfigurationError(f"{label} must be a dict")
    provider = OpenAICompatible(
        base_url=base_url,
        name=name,
        model=model,
        params=params,
        api_args=api_args,
        # str() of a None would send the header "None"; None removes the header instead.
        api_headers={str(k): None if v is None else str(v) for k, v in (api_headers or {}).items()},
        credentials=_credentials(api_key, credentials, env_var, stacklevel=3),
        price_provider=price_provider,
        price_lookup=price_lookup,
        drop_params=drop_params,
        timeout=timeout,
    )
    return Chat(provider, system_prompt=system_prompt, echo=echo or "none")


def chat_openai_compatible(
    base_url: str,
    name: str = "OpenAI-compatible",
    system_prompt: str | None = None,
    api_key: str | None = None,
    credentials: CredentialsArg = None,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
    api_args: Mapping[str, Any] | None = None,
    api_headers: Mapping[str, str | None] | None = None,
    echo: Echo | None = None,
    timeout: float | None = None,
) -> Chat:
    """Chat with any server that speaks OpenAI's chat-completions API.

    A port of ellmer's ``chat_openai_compatible()``. ``credentials`` is a key (str), or a
    zero-argument function returning a key or a mapping of headers, called for every request;
    None uses ``$OPENAI_API_KEY`` when set, else sends no auth header. ``model=None`` asks the
    server's ``/models`` and uses its only model. ``api_args`` is deep-merged into every request
    body (a None value deletes the key); ``api_headers`` are added last (a None value removes
    that header, e.g. ``{"Authorization": None}``). ``timeout`` is how
    many seconds to wait for the server to connect and between two pieces of the answer
    (default: 10 s to connect, 300 s between pieces). ``base_url`` may carry a query
    (Azure's ``?api-version=...``, kept after the endpoint's path) but no ``user:pass@``.
    """
    return _make(
        base_url=base_url, name=name, system_prompt=system_prompt, api_key=api_key,
        credentials=credentials, model=model, params=params, api_args=api_args,
        api_headers=api_headers, echo=echo, env_var="OPENAI_API_KEY",
        price_provider=None,
        price_lookup=True,
        timeout=timeout,
    )


def _preset(
    default_url: str,
    url_env: str | None,
    name: str,
    env_var: str | None,
    price_provider: str | None,
    drop_params: frozenset[str] = frozenset(),
    doc: str = "",
) -> Callable[..., Chat]:
    def preset(
        system_prompt: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        credentials: CredentialsArg = None,
        model: str | None = None,
        params: Mapping[str, Any] | None = None,
        api_args: Mapping[str, Any] | None = None,
        api_headers: Mapping[str, str | None] | None = None,
        echo: Echo | None = None,
        timeout: float | None = None,
    ) -> Chat:
        url = base_url or (os.environ.get(url_env) if url_env else None) or default_url
        return _make(
            base_url=url, name=name, system_prompt=system_prompt, api_key=api_key,
            credentials=credentials, model=model, params=params, api_args=api_args,
            api_headers=api_headers, echo=echo, env_var=env_var,
            price_provider=price_provider, drop_params=drop_params, timeout=timeout,
        )

    preset.__doc__ = doc
    return preset


chat_openai = _preset(
    "https://api.openai.com/v1", "OPENAI_BASE_URL", "OpenAI", "OPENAI_API_KEY", "openai",
    drop_params=frozenset({"top_k"}),
    doc="Chat with OpenAI (key from $OPENAI_API_KEY).",
)
chat_openrouter = _preset(
    "https://openrouter.ai/api/v1", None, "OpenRouter", "OPENROUTER_API_KEY", "openrouter",
    doc="Chat with any model on OpenRouter (key from $OPENROUTER_API_KEY).",
)
chat_groq = _preset(
    "https://api.groq.com/openai/v1", None, "Groq", "GROQ_API_KEY", "groq",
    drop_params=frozenset({"top_k"}),
    doc="Chat with Groq (key from $GROQ_API_KEY).",
)
chat_deepseek = _preset(
    "https://api.deepseek.com/v1", None, "DeepSeek", "DEEPSEEK_API_KEY", "deepseek",
    drop_params=frozenset({"top_k"}),
    doc="Chat with DeepSeek (key from $DEEPSEEK_API_KEY); reasoning models' thinking is kept apart.",
)
chat_ollama = _preset(
    "http://127.0.0.1:11434/v1", "OLLAMA_BASE_URL", "Ollama", None, None,
    doc="Chat with a local Ollama server (no key).",
)
chat_vllm = _preset(
    "http://127.0.0.1:8000/v1", "VLLM_BASE_URL", "vLLM", "VLLM_API_KEY", None,
    doc="Chat with a vLLM server (key from $VLLM_API_KEY if it needs one).",
)
chat_llamacpp = _preset(
    "http://127.0.0.1:8080/v1", "LLAMACPP_BASE_URL", "llama.cpp", None, None,
    doc="Chat with llama.cpp's server (``llama-server`` or ``python -m llama_cpp.server``).",
)
chat_lmstudio = _preset(
    "http://127.0.0.1:1234/v1", None, "LM Studio", None, None,
    doc="Chat with LM Studio's local server.",
)
for _f, _n in (
    (chat_openai, "chat_openai"), (chat_openrouter, "chat_openrouter"), (chat_groq, "chat_groq"),
    (chat_deepseek, "chat_deepseek"), (chat_ollama, "chat_ollama"), (chat_vllm, "chat_vllm"),
    (chat_llamacpp, "chat_llamacpp"), (chat_lmstudio, "chat_lmstudio"),
):
    _f.__name__ = _f.__qualname__ = _n
