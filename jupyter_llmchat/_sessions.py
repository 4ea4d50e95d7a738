"""The kernel's named chat sessions, shared by the ``%%chat`` magics and the chat panel.

``registry`` is the one registry of the kernel's sessions, and of what hangs off them: the
magics, bridge and panels of each shell. (What every Chat of the process shares, its usage
ledger and the wire's caches, is the core's ``_process``; the bundled model's one server is
``_local``'s.) A session made from
configuration is built by the factory the magics install (``ChatMagics`` traits); without the
extension loaded, from ``$OPENAI_BASE_URL`` / ``$OPENAI_MODEL``, or the bundled local model.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ._core._chat import Chat, Echo
from ._core._presets import chat_openai_compatible
from ._core._process import process
from ._core._usage import Ledger
from ._errors import ConfigurationError
from ._local._model import LocalProvider, local_provider

__all__ = ["on_session", "session", "session_names", "use"]

#: Builds a Chat for a new session name; replaced by the magics with one that reads traits.
Factory = Callable[[str], Chat]


class Registry:
    """The kernel's state: its sessions, and what hangs off them (one object, one place)."""

    def __init__(self) -> None:
        self.sessions: dict[str, Chat] = {}
        self.lock = threading.Lock()
        # Held while a factory builds a session, so two threads asking for the same new session
        # (a cell and the panel) get one Chat and the factory runs once. Re-entrant: a factory
        # may look up another session.
        self.create_lock = threading.RLock()
        self.factory: Factory | None = None
        self.refresher: Callable[[str], None] | None = None
        #: Called with (name, chat) whenever a session is created or replaced.
        self.hooks: list[Callable[[str, Chat], None]] = []
        #: Per shell (weak: a shell gone is forgotten): the magics loaded into it, and its
        #: bridge to the notebook's front end.
        self.magics: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self.bridges: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        #: The open chat panels; %chat_panel reuses the one showing the session it asks for.
        self.panels: list[Any] = []

    @property
    def usage(self) -> Ledger:
        """Every answer of every Chat of this process (the core's ledger, read here)."""
        return process.ledger


registry = Registry()

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
    provider = local_provider(
        params={**LOCAL_PARAMS, **dict(params or {})}, api_args={**LOCAL_API_ARGS, **dict(api_args or {})}
    )
    return Chat(provider, system_prompt=system_prompt, echo=echo or "none")


def _default_factory(name: str) -> Chat:
    base_url = os.environ.get("OPENAI_BASE_URL")
    if base_url:
        return chat_openai_compatible(base_url=base_url, model=os.environ.get("OPENAI_MODEL") or None)
    return local_chat()


def refresh(name: str) -> None:
    """Let the configuration apply its changed settings to session ``name``, in place (the
    magics' hook: the session stays the same Chat)."""
    if registry.refresher is not None:
        registry.refresher(name)


def prepare(name: str = "default", on_status: Callable[[str], None] | None = None, *,
            start: bool = True) -> Chat:
    """The session, ready to send: the local model's server is started first if it is used
    (unless ``start`` is false: nothing will be sent)."""
    refresh(name)
    chat = session(name)
    if start and isinstance(chat.provider, LocalProvider):
        chat.provider.start(on_status)  # now, so the status shows before the answer starts
    return chat


def set_factory(factory: Factory | None, refresher: Callable[[str], None] | None = None) -> None:
    """Install how sessions are made, and a hook run before each use (it may change one's
    settings in place, never replace it)."""
    registry.factory = factory
    registry.refresher = refresher


def session(name: str = "default", *, create: bool = True) -> Chat:
    """The kernel's chat session ``name``, created from configuration on first use."""
    check_name(name)
    with registry.lock:
        chat = registry.sessions.get(name)
    if chat is not None:
        return chat
    if not create:
        known = ", ".join(sorted(registry.sessions)) or "none yet"
        raise ConfigurationError(f"no session named {name!r}", hint=f"sessions: {known}")
    with registry.create_lock:
        with registry.lock:
            chat = registry.sessions.get(name)
        if chat is not None:  # another thread made it while this one waited
            return chat
        chat = (registry.factory or _default_factory)(name)
        with registry.lock:
            # use() may have set it meanwhile (it does not take create_lock): that one wins.
            existing = registry.sessions.setdefault(name, chat)
    if existing is chat:
        _run_hooks(name, chat)
    return existing


def use(chat: Chat, name: str = "default") -> Chat:
    """Make ``chat`` the session ``name``: the magics and the panel will talk through it."""
    if not isinstance(chat, Chat):
        raise ConfigurationError(f"use() takes a Chat, not a {type(chat).__name__}")
    check_name(name)
    with registry.lock:
        registry.sessions[name] = chat
    _run_hooks(name, chat)
    return chat


def session_names() -> list[str]:
    with registry.lock:
        return list(registry.sessions)


def sessions() -> dict[str, Chat]:
    with registry.lock:
        return dict(registry.sessions)


def drop(name: str) -> None:
    with registry.lock:
        registry.sessions.pop(name, None)


def on_session(fn: Callable[[str, Chat], None]) -> None:
    """Call ``fn(name, chat)`` for every session, now and whenever one is created or replaced."""
    registry.hooks.append(fn)
    for name, chat in sessions().items():
        fn(name, chat)


def _run_hooks(name: str, chat: Chat) -> None:
    for fn in list(registry.hooks):
        fn(name, chat)
