"""The replay key, version 2: whether a cell may show its recorded answer again, and why not.

A ``%%chat`` cell run again shows its recorded answer with no request when nothing that decides
the request changed (DESIGN §3). Version 1 of the key (``_spend.request_hash``) is one hash of
it all, so it can only say "not the same". Version 2 keeps the parts apart, in the user turn's
``request_key`` in the record::

    {"v": 2, "prompt": D, "history": D, "model": D, "system": D, "params": D, "tools": D,
     "with": {"df": D, ...}}

(each ``D`` a short digest), so a cell asked again says which part changed, and it covers what
``--with`` attaches by content (the value's fingerprint, given by the caller), not only by the
summary the model reads.

A new exchange records both keys: an older reader replays it by the version 1 hash, and an
exchange recorded before version 2 (only ``request_hash``) is still replayed by it, so this
version asks no saved notebook again. A key of a version this reader does not know is kept in
the record as it was and not read: the version 1 hash beside it decides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ._spend import HASH_KEY, history_hash, request_hash
from ._tools import Tool
from ._turns import Turn, exchanges

__all__ = [
    "KEY_FIELD",
    "KEY_VERSION",
    "ReplayCheck",
    "Request",
    "RequestKey",
    "check_replay",
    "history_digest",
]

KEY_FIELD = "request_key"
KEY_VERSION = 2
#: The parts of a key, in the order a reason names them.
PARTS = ("prompt", "history", "model", "system", "params", "tools")
#: Most ``--with`` values keyed one by one, and the longest name; past either they are keyed
#: as one (the record stays small: a reader keeps a key of up to 8,000 characters).
MAX_WITH = 32
MAX_NAME = 64
_DIGEST_CHARS = 16

_REASONS = {
    "prompt": "its prompt changed",
    "history": "the conversation above changed",
    "model": "the model changed",
    "system": "the system prompt changed",
    "params": "the params changed",
    "tools": "the tools changed",
    "with": "the --with names changed",
    "attached": "what --with attached changed",
    "partial": "its recorded answer is partial",
    "unkeyed": "its recorded exchange has no replay key",
    "unread": "its replay key is not one this version reads",
    # A key from before version 2 tells only that something changed, besides what is in the
    # record itself (the prompt as sent).
    "v1": "the conversation above, the model, the system prompt or the params changed",
}


def _digest(value: Any) -> str:
    raw = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]


def history_digest(hashed: Any) -> str:
    """The key's ``history`` part of a running ``history_hash`` (a reader of the notebook's
    order compares it exchange by exchange: ``_record/_order.py``'s stale cells)."""
    return str(hashed.hexdigest()[:_DIGEST_CHARS])


def _is_digest(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 64


@dataclass(frozen=True)
class RequestKey:
    """A request's replay key, part by part (see the module's docstring)."""

    prompt: str
    history: str
    model: str
    system: str
    params: str
    tools: str
    #: (name, digest) of each ``--with`` value, in the order attached.
    attached: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": KEY_VERSION}
        d.update((p, getattr(self, p)) for p in PARTS)
        d["with"] = dict(self.attached)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> RequestKey | None:
        """The key a record holds, or None when it is not a version 2 key this reader can read
        (a newer version, a hand edit): then it is not compared, and stays in the record."""
        if not isinstance(d, Mapping) or d.get("v") != KEY_VERSION:
            return None
        if not all(_is_digest(d.get(p)) for p in PARTS):
            return None
        parts: dict[str, str] = {p: d[p] for p in PARTS}
        attached = d.get("with", {})
        if not isinstance(attached, Mapping):
            return None
        if len(attached) > MAX_WITH or not all(
            isinstance(k, str) and len(k) <= MAX_NAME and _is_digest(v) for k, v in attached.items()
        ):
            return None
        return cls(**parts, attached=tuple(attached.items()))

    def changes(self, recorded: RequestKey) -> tuple[str, ...]:
        """What differs from ``recorded``: part names, and ``with:NAME`` per changed value."""
        out = [p for p in PARTS if getattr(self, p) != getattr(recorded, p)]
        mine, theirs = dict(self.attached), dict(recorded.attached)
        if list(mine) != list(theirs):
            out.append("with")
        else:
            out.extend(f"with:{name}" for name, d in self.attached if theirs[name] != d)
        return tuple(out)


@dataclass(frozen=True)
class Request:
    """What decides a request, as a cell is about to send it (the inputs of both keys)."""

    #: The question after ``{{ }}``, before its attachments.
    prompt: str
    #: What is sent: the prompt with its attachments.
    text: str
    #: The turns sent before it (the conversation above).
    history: Sequence[Turn]
    provider: str
    model: str | None
    system_prompt: str | None
    params: Mapping[str, Any]
    tools: Sequence[Tool] = ()
    #: (name, digest of its content and summary) of each ``--with`` value.
    attached: Sequence[tuple[str, str]] = ()

    @cached_property
    def _history(self) -> Any:
        return history_hash(self.history)  # hashed once for both keys: it is the long part

    def key(self) -> RequestKey:
        """The version 2 key."""
        tools = sorted([t.name, t.description, t.parameters] for t in self.tools)
        attached = tuple(self.attached)
        if len(attached) > MAX_WITH or any(len(name) > MAX_NAME for name, _ in attached):
            attached = ((f"{len(attached)} values", _digest(attached)),)
        return RequestKey(
            prompt=_digest(self.prompt),
            history=history_digest(self._history),
            model=_digest([self.provider, self.model or ""]),
            system=_digest(self.system_prompt or ""),
            params=_digest(dict(self.params)),
            tools=_digest(tools),
            attached=attached,
        )

    def legacy_hash(self, text: str | None = None) -> str:
        """The version 1 key (``request_hash``), of ``text`` in place of the prompt if given."""
        return request_hash(
            self.text if text is None else text, self.history, provider=self.provider,
            model=self.model, system_prompt=self.system_prompt, params=self.params,
            hashed=self._history,
        )

    def meta(self) -> dict[str, Any]:
        """The keys as the user turn's record keeps them."""
        return {HASH_KEY: self.legacy_hash(), KEY_FIELD: self.key().to_dict()}


@dataclass(frozen=True)
class ReplayCheck:
    """The outcome for one recorded exchange: the index of its prompt to show again, or why not
    (``changed``: names of parts, ``with:NAME``, or another of the reasons below)."""

    index: int | None
    changed: tuple[str, ...] = ()

    def reason(self) -> str:
        """Why the recorded answer is not shown, in a few words ("" when it is, or none)."""
        names = [c.split(":", 1)[1] for c in self.changed if c.startswith("with:")]
        words = [_REASONS[c] for c in self.changed if c in _REASONS]
        if names:
            what = "a --with value" if len(names) == 1 else "--with values"
            words.append(f"{what} changed: {', '.join(names)}")
        return "; ".join(words)


def check_replay(turns: Sequence[Turn], at: int | None, request: Request) -> ReplayCheck:
    """Whether the exchange recorded at ``turns[at]`` answers ``request`` unchanged.

    ``ReplayCheck(None)`` with no reason: nothing is recorded there to compare with."""
    if at is None or not 0 <= at < len(turns) - 1 or turns[at].role != "user":
        return ReplayCheck(None)
    exchange = next(iter(exchanges(list(turns[at:]))))
    if len(exchange) < 2 or exchange[1].role != "assistant":
        return ReplayCheck(None)
    user = exchange[0]
    stored = RequestKey.from_dict(user.meta.get(KEY_FIELD))
    if stored is not None:
        changed = request.key().changes(stored)
    elif isinstance(user.meta.get(HASH_KEY), str):
        changed = _legacy_changes(user, request)
    else:
        changed = ("unread",) if user.meta.get(KEY_FIELD) is not None else ("unkeyed",)
    if not changed and any(t.partial for t in exchange if t.role == "assistant"):
        changed = ("partial",)
    return ReplayCheck(None if changed else at, changed)


def _legacy_changes(user: Turn, request: Request) -> tuple[str, ...]:
    """What changed, by an exchange's version 1 key: nothing, or what the record shows (the
    prompt as sent), then the rest as one reason."""
    stored = user.meta[HASH_KEY]
    if request.legacy_hash() == stored:
        return ()
    out: tuple[str, ...] = ()
    sent = user.text
    if sent != request.text:
        bare = request.prompt.rstrip()
        same_prompt = sent == bare or sent.startswith(bare + "\n\n[attached value `")
        out = ("attached",) if same_prompt and request.attached else ("prompt",)
        if request.legacy_hash(sent) == stored:
            return out
    return (*out, "v1")
