"""The kernel's named chat sessions, shared by the ``%%chat`` magics and the chat panel.

``_SESSIONS`` is the one registry of this package's global state. A session made from
configuration is built by the factory the magics install (``ChatMagics`` traits); without the
extension loaded, from ``$OPENAI_BASE_URL`` / ``$OPENAI_MODEL``, or the bundled local model.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._chat import Chat, Echo
from ._errors import ConfigurationError

__all__ = ["on_session", "session", "session_names", "use"]

_SESSIONS: dict[str, Chat] = {}
_lock = threading.Lock()
# Held while a factory builds a session, so two threads asking for the same new session (a cell
# and the panel) get one Chat and the factory runs once. Re-entrant: a factory may look up
# another session.
_create_lock = threading.RLock()
#: Builds a Chat for a new session name; replaced by the magics with one that reads traits.
Factory = Callable[[str], Chat]
_factory: Factory | None = None
_refresher: Callable[[str], None] | None = None
#: Called with (name, chat) whenever a session is created or replaced.
_hooks: list[Callable[[str, Chat], None]] = []

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"bad session name {name!r}", hint="use letters, digits, '_', '-' or '.'"
        )
    return name


#: Sampling for the bundled model unless the user's params say otherwise: chosen with
#: benchmarks/bench_local_quality.py (figures in benchmarks/README.md).
#: Greedy decoding answered most on topic; llama.cpp's repeat_penalty (its server's default is
#: 1.1) is off: with the examples' words in the prompt it pushed answers away from the facts.
LOCAL_PARAMS = {"temperature": 0.0}
LOCAL_API_ARGS = {"repeat_penalty": 1.0}


def local_chat(
    *,
    system_prompt: str | None = None,
    params: Mapping[str, Any] | None = None,
    api_args: Mapping[str, Any] | None = None,
    echo: Echo | None = None,
) -> Chat:
    """A session on the bundled local model; its server starts on the first request, not here."""
    from ._local import local_provider

    provider = local_provider(
        params={**LOCAL_PARAMS, **dict(params or {})}, api_args={**LOCAL_API_ARGS, **dict(api_args or {})}
    )
    return Chat(provider, system_prompt=system_prompt, echo=echo or "none")


def is_local(chat: Chat) -> bool:
    """True for a session on the bundled local model (its answers are free)."""
    from ._local import LocalProvider

    return isinstance(chat.provider, LocalProvider)


def _default_factory(name: str) -> Chat:
    from ._presets import chat_openai_compatible

    base_url = os.environ.get("OPENAI_BASE_URL")
    if base_url:
        return chat_openai_compatible(base_url=base_url, model=os.environ.get("OPENAI_MODEL") or None)
    return local_chat()


def refresh(name: str) -> None:
    """Let the configuration rebuild session ``name`` if it changed since (see the magics)."""
    if _refresher is not None:
        _refresher(name)


def prepare(name: str = "default", on_status: Callable[[str], None] | None = None) -> Chat:
    """The session, ready to send: the local model's server is started first if it is used."""
    refresh(name)
    chat = session(name)
    from ._local import LocalProvider

    if isinstance(chat.provider, LocalProvider):
        chat.provider.start(on_status)  # now, so the status shows before the answer starts
    return chat


def set_factory(factory: Factory | None, refresher: Callable[[str], None] | None = None) -> None:
    """Install how sessions are made, and a hook run before each use (it may rebuild one)."""
    global _factory, _refresher
    _factory = factory
    _refresher = refresher


def session(name: str = "default", *, create: bool = True) -> Chat:
    """The kernel's chat session ``name``, created from configuration on first use."""
    check_name(name)
    with _lock:
        chat = _SESSIONS.get(name)
    if chat is not None:
        return chat
    if not create:
        known = ", ".join(sorted(_SESSIONS)) or "none yet"
        raise ConfigurationError(f"no session named {name!r}", hint=f"sessions: {known}")
    with _create_lock:
        with _lock:
            chat = _SESSIONS.get(name)
        if chat is not None:  # another thread made it while this one waited
            return chat
        chat = (_factory or _default_factory)(name)
        with _lock:
            # use() may have set it meanwhile (it does not take _create_lock): that one wins.
            existing = _SESSIONS.setdefault(name, chat)
    if existing is chat:
        _run_hooks(name, chat)
    return existing


def use(chat: Chat, name: str = "default") -> Chat:
    """Make ``chat`` the session ``name``: the magics and the panel will talk through it."""
    if not isinstance(chat, Chat):
        raise ConfigurationError(f"use() takes a Chat, not a {type(chat).__name__}")
    check_name(name)
    with _lock:
        _SESSIONS[name] = chat
    _run_hooks(name, chat)
    return chat


def session_names() -> list[str]:
    with _lock:
        return list(_SESSIONS)


def sessions() -> dict[str, Chat]:
    with _lock:
        return dict(_SESSIONS)


def drop(name: str) -> None:
    with _lock:
        _SESSIONS.pop(name, None)


def on_session(fn: Callable[[str, Chat], None]) -> None:
    """Call ``fn(name, chat)`` for every session, now and whenever one is created or replaced."""
    _hooks.append(fn)
    for name, chat in sessions().items():
        fn(name, chat)


def _run_hooks(name: str, chat: Chat) -> None:
    for fn in list(_hooks):
        fn(name, chat)
