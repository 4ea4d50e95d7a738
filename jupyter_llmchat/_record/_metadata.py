"""The notebook's record of its chats: ``metadata["jupyter_llmchat"]``, schema version 1.

Built by the kernel, written into the notebook by the JupyterLab extension (``_bridge``), read
back at ``%load_ext`` to restore sessions after a restart, and rebuilt from cell outputs by
``jupyter-llmchat consolidate`` where no extension ran. A record read from a notebook is
untrusted input: ``validate_record`` checks every field and size before anything is used, and
nothing from it is ever executed or rendered unescaped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from .._core._chat import Chat
from .._core._spend import Budget
from .._core._turns import (
    NEW_KEY,
    Content,
    ContentImage,
    ContentText,
    Turn,
    check_tool_pairs,
    exchanges,
    record_exchanges,
)
from .._core._usage import Ledger
from .._errors import RecordError

__all__ = [
    "KEY",
    "SCHEMA_VERSION",
    "Ledger",
    "bounded_turn",
    "build_record",
    "display_metadata",
    "merge_records",
    "record_from_outputs",
    "session_record",
    "turns_extend",
    "turns_follow",
    "validate_record",
]

KEY = "jupyter_llmchat"
SCHEMA_VERSION = 1

#: Inline images larger than this (characters of their data: URL) are stored by reference.
MAX_INLINE_IMAGE = 16_384
# Limits for records read from a notebook (hostile files must not exhaust the kernel).
MAX_RECORD_CHARS = 50_000_000
MAX_SESSIONS = 200
MAX_TURNS = 20_000
MAX_TEXT = 2_000_000
MAX_USAGE_ROWS = 1_000
#: A tool call's arguments or result (as JSON) longer than this is cut in the record, with a note.
MAX_TOOL_CHARS = 32_000
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_RECORD_ID = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: its start, then a note saying how long it was."""
    if len(text) <= limit:
        return text
    note = f"\n[cut in the notebook's record: {len(text):,} characters in all]"
    return text[: max(0, limit - len(note))] + note


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def bounded_turn(t: Turn) -> dict[str, Any]:
    """A turn as the record keeps it: within the limits it is read with, content by content,
    so that one oversized content (a tool's large result, a huge prompt) is cut, with a note,
    and never stops the turns after it from being recorded."""
    d = t.to_dict()
    # An unknown cell id (nbclient sends none) is left out, as reading a record leaves it out:
    # the record is then the same whether it comes from the kernel or from `consolidate`.
    for k in ("cell_id", "source"):
        if k in d and d[k] is None:
            del d[k]
    for c in d["contents"]:
        kind = c.get("type")
        if kind == "image" and len(c.get("url", "")) > MAX_INLINE_IMAGE:
            raw = c["url"].encode()
            c["url"] = f"omitted:sha256:{hashlib.sha256(raw).hexdigest()}"
            c["bytes"] = len(raw)
        elif kind in ("text", "thinking"):
            c[kind] = _cut(c[kind], MAX_TEXT)
        elif kind == "tool_result":
            if c.get("value") is not None and len(_as_text(c["value"])) > MAX_TOOL_CHARS:
                c["value"] = _cut(_as_text(c["value"]), MAX_TOOL_CHARS)
            if c.get("error") is not None:
                c["error"] = _cut(c["error"], MAX_TOOL_CHARS)
        elif kind == "tool_request" and len(_as_text(c["arguments"])) > MAX_TOOL_CHARS:
            c["arguments"] = {"cut": _cut(_as_text(c["arguments"]), MAX_TOOL_CHARS)}
    return d


def session_record(chat: Chat, turns: list[Turn] | None = None) -> dict[str, Any]:
    """A session's part of the record (``turns``: a snapshot of its turns, default all now)."""
    return {
        "provider": chat.provider.describe(),
        "system_prompt": chat.system_prompt,
        "turns": [bounded_turn(t) for t in (chat.get_turns() if turns is None else turns)],
    }


def build_record(sessions: dict[str, Chat], ledger: Ledger, budget: Budget | None = None) -> dict[str, Any]:
    """The whole record for the notebook: every session's turns, the usage ledger, the budget."""
    record = {
        "version": SCHEMA_VERSION,
        "sessions": {name: session_record(chat) for name, chat in sessions.items()},
        "usage": ledger.to_list(),
    }
    if budget is not None and budget.active:
        record["budget"] = budget.to_dict()
    return record


def display_metadata(
    name: str, chat: Chat, exchange: Sequence[Turn], *, recorded: bool, new: bool = False
) -> dict[str, Any]:
    """Metadata of an answer's final display: the turn, enough to rebuild the record without
    the extension (``jupyter-llmchat consolidate``).

    ``exchange``: its turns, the prompt first and the answer last; the tool rounds between
    them (answers asking for calls, the results) are kept whole under ``rounds``.
    The answer's text is not repeated: it is the output's text/plain. Its thinking is kept.
    """
    user, reply = exchange[0], exchange[-1]
    rounds = [bounded_turn(t) for t in exchange[1:-1]]
    answer = reply.to_dict()
    return {
        KEY: {
            "version": SCHEMA_VERSION,
            "session": name,
            "prompt": _cut(user.text, MAX_TEXT),
            "model": answer["model"],
            "tokens": answer["tokens"],
            "cost_usd": answer["cost_usd"],
            "finish_reason": answer["finish_reason"],
            "partial": answer["partial"],
            **({"free": True} if reply.free else {}),
            "thinking": _cut(reply.thinking, MAX_TEXT) if reply.thinking else None,
            "started_at": answer["started_at"],
            "duration_s": answer["duration_s"],
            "cell_id": user.meta.get("cell_id"),
            "source": user.meta.get("source", "cell"),
            "request_hash": user.meta.get("request_hash"),
            **({"above_hash": user.meta["above_hash"]} if "above_hash" in user.meta else {}),
            **({"request_key": user.meta["request_key"]} if "request_key" in user.meta else {}),
            "recorded": recorded,
            "new": new,
            "provider": chat.provider.describe(),
            "system_prompt": chat.system_prompt,
            **({"rounds": rounds} if rounds else {}),
            # With tool rounds the answer's request began after the prompt's.
            **({"prompt_started_at": user.to_dict().get("started_at")} if rounds else {}),
        }
    }


def turns_from_display(meta: dict[str, Any], text: str) -> list[Turn]:
    """The turns a final display stands for (prompt, tool rounds, answer); inverse of
    ``display_metadata``."""
    common = {k: meta.get(k) for k in ("cell_id", "source") if isinstance(meta.get(k), str)}
    user = Turn.from_dict({
        "role": "user", "contents": [{"type": "text", "text": meta.get("prompt", "")}],
        "started_at": meta.get("prompt_started_at") or meta.get("started_at"),
        "request_hash": meta.get("request_hash"), "request_key": meta.get("request_key"), **common,
        # The conversation above the cell when it was asked: its stale mark (DESIGN §10).
        **({"above_hash": meta["above_hash"]} if "above_hash" in meta else {}),
        # A --new cell starts the conversation of the cells below it; those above stay.
        **({NEW_KEY: True} if meta.get("new") is True else {}),
    })
    contents = [{"type": "thinking", "thinking": meta["thinking"]}] if meta.get("thinking") else []
    contents.append({"type": "text", "text": text})
    reply = Turn.from_dict({
        "role": "assistant", "contents": contents, **common,
        **{k: meta.get(k) for k in ("started_at", "duration_s", "model", "tokens", "cost_usd",
                                    "finish_reason", "partial", "free")},
    })
    rounds = meta.get("rounds") or []
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        raise ValueError("rounds is not a list of turns")
    return [user, *(Turn.from_dict(r) for r in rounds), reply]


# -- reading untrusted records -------------------------------------------------------------------


def _str_or_none(v: Any, what: str, limit: int = 10_000) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise RecordError(f"{what} must be a string of at most {limit} characters")
    return v


def _placeholder(c: Content) -> Content:
    """An image whose bytes are not in the record, as a short text the server can take.

    Sent as an ``image_url``, an ``omitted:sha256:...`` reference (or any URL that is neither
    ``data:`` nor http) makes the server refuse this request and every later one.
    """
    if isinstance(c, ContentImage) and not c.url.startswith(("data:image/", "http://", "https://")):
        ref = c.url.rsplit(":", 1)[-1][:16] if c.url.startswith("omitted:sha256:") else "unknown"
        return ContentText(f"[an image was here; its bytes are not kept in the notebook (sha256 {ref}...)]")
    return c


def validate_record(obj: Any) -> dict[str, Any]:
    """Check a record read from a notebook; return a clean copy, or raise ``RecordError``.

    A budget it cannot read does not refuse the record: the copy says why in ``budget_error``
    (and has no ``budget``), so the reader restores the rest and lifts no limit (DESIGN §6)."""
    if not isinstance(obj, dict):
        raise RecordError("the record is not an object")
    if obj.get("version") != SCHEMA_VERSION:
        raise RecordError(f"unknown record version {obj.get('version')!r}")
    try:
        # allow_nan=False: NaN and Infinity are not JSON (Python's json reads them all the same).
        size = len(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise RecordError(f"the record is not plain JSON: {exc}") from None
    if size > MAX_RECORD_CHARS:
        raise RecordError("the record is too large")
    sessions = obj.get("sessions", {})
    if not isinstance(sessions, dict) or len(sessions) > MAX_SESSIONS:
        raise RecordError("sessions must be an object of at most %d sessions" % MAX_SESSIONS)
    clean: dict[str, Any] = {"version": SCHEMA_VERSION, "sessions": {}, "usage": []}
    if obj.get("id") is not None:
        if not isinstance(obj["id"], str) or not _RECORD_ID.match(obj["id"]):
            raise RecordError("the record's id must be 8 to 64 letters, digits, '-' or '_'")
        clean["id"] = obj["id"]
    for name, s in sessions.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise RecordError(f"bad session name {str(name)[:40]!r}")
        if not isinstance(s, dict):
            raise RecordError(f"session {name!r} is not an object")
        prov = s.get("provider") or {}
        if not isinstance(prov, dict):
            raise RecordError(f"session {name!r}: provider is not an object")
        turns_raw = s.get("turns", [])
        if not isinstance(turns_raw, list) or len(turns_raw) > MAX_TURNS:
            raise RecordError(f"session {name!r}: turns must be a list of at most {MAX_TURNS}")
        turns = []
        for i, t in enumerate(turns_raw):
            if not isinstance(t, dict):
                raise RecordError(f"session {name!r}: turn {i} is not an object")
            contents = t.get("contents")
            for c in contents if isinstance(contents, list) else []:  # from_dict refuses the rest
                if isinstance(c, dict) and any(isinstance(v, str) and len(v) > MAX_TEXT for v in c.values()):
                    raise RecordError(f"session {name!r}: turn {i} has a text over {MAX_TEXT} characters")
            try:
                turn = Turn.from_dict(t)
            except (ValueError, TypeError) as exc:
                raise RecordError(f"session {name!r}: turn {i}: {exc}") from None
            turn.contents = [_placeholder(c) for c in turn.contents]
            if turn.duration is not None and turn.duration < 0:
                raise RecordError(f"session {name!r}: turn {i}: duration_s must not be negative")
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role != expected:
                raise RecordError(f"session {name!r}: turn {i} should be {expected}")
            turns.append(turn)
        try:
            check_tool_pairs(turns)  # set_turns would refuse them: refuse the record instead
        except ValueError as exc:
            raise RecordError(f"session {name!r}: {exc}") from None
        clean["sessions"][name] = {
            "provider": {
                "name": _str_or_none(prov.get("name"), "provider.name", 200),
                "base_url": _str_or_none(prov.get("base_url"), "provider.base_url", 2000),
                "model": _str_or_none(prov.get("model"), "provider.model", 500),
            },
            "system_prompt": _str_or_none(s.get("system_prompt"), "system_prompt", MAX_TEXT),
            "turns": turns,
        }
    if obj.get("budget") is not None:
        try:
            clean["budget"] = Budget.from_dict(obj["budget"]).to_dict()
        except ValueError as exc:
            # The rest is read: the reader refuses requests until a budget is set (DESIGN §6).
            clean["budget_error"] = str(exc)
    usage = obj.get("usage", [])
    if not isinstance(usage, list) or len(usage) > MAX_USAGE_ROWS:
        raise RecordError("usage must be a list")
    for i, u in enumerate(usage):
        if not isinstance(u, dict):
            raise RecordError(f"usage row {i} is not an object")
        row: dict[str, Any] = {
            "provider": _str_or_none(u.get("provider"), "usage.provider", 200) or "unknown",
            "model": _str_or_none(u.get("model"), "usage.model", 500) or "unknown",
        }
        for k in ("turns", "input", "output", "cached"):
            v = u.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise RecordError(f"usage row {i}: {k} must be a non-negative integer")
            row[k] = v
        cost = u.get("cost_usd")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0):
            raise RecordError(f"usage row {i}: cost_usd must be a non-negative number")
        row["cost_usd"] = cost
        if u.get("free") is True:  # additive (DESIGN §6): rows of answers known to be free
            row["free"] = True
        clean["usage"].append(row)
    return clean


def turns_extend(old: list[Turn], new: list[Turn]) -> bool:
    """True when ``new`` is ``old`` followed by more turns (compared by role and text)."""
    if len(new) <= len(old):
        return False
    return all(a.role == b.role and a.text == b.text for a, b in zip(old, new))


def turns_follow(old: list[Turn], new: list[Turn]) -> bool:
    """True when ``new`` holds every exchange of ``old`` and is not ``old`` itself: more turns,
    or the same exchanges in another order (cells moved while no kernel heard of it: the record
    follows the notebook's order, DESIGN §7). Exchanges are compared by cell, role and text."""
    def key(ex: list[Turn]) -> tuple[Any, ...]:
        return (ex[0].meta.get("cell_id"), *((t.role, t.text) for t in ex))

    if turns_extend(old, new):
        return True
    theirs = [key(ex) for ex in exchanges(new)]
    ours = [key(ex) for ex in exchanges(old)]
    if not ours or theirs == ours:
        return False
    remaining = list(theirs)
    for k in ours:
        if k not in remaining:
            return False
        remaining.remove(k)
    return True


# -- rebuilding from outputs (no extension: nbclient, VS Code, classic) --------------------------


def record_from_outputs(nb: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the record from the final displays' metadata, in cell order."""
    sessions: dict[str, dict[str, Any]] = {}
    ledger = Ledger()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            meta = (out.get("metadata") or {}).get(KEY)
            if not isinstance(meta, dict):
                continue
            if "reset" in meta:
                for name in meta.get("reset") or []:
                    if name in sessions:
                        sessions[name]["turns"] = []
                continue
            data = out.get("data") or {}
            text = data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            name = meta.get("session", "default")
            turns = turns_from_display(meta, text)
            provider = meta.get("provider") or {}
            if not isinstance(provider, dict):
                raise ValueError(f"cell {cell.get('id')!r}: provider is not an object")
            provider = {k: provider.get(k) for k in ("name", "base_url", "model")}
            # A replayed answer's output stands for the request that made it (whose own output it
            # replaced), so its spend is counted once, here, like any other; every request of
            # the exchange (tool rounds too) was paid for.
            for t in turns:
                if t.role == "assistant":
                    ledger.add(provider.get("name") or "unknown", t)
            if not meta.get("recorded", True):
                continue
            s = sessions.setdefault(name, {"provider": provider, "system_prompt": None, "turns": []})
            s["provider"] = provider
            s["system_prompt"] = meta.get("system_prompt")
            s["turns"].extend(bounded_turn(t) for t in turns)
    return {"version": SCHEMA_VERSION, "sessions": sessions, "usage": ledger.to_list()}


def _replies(exchange: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in exchange if t.get("role") == "assistant"]


def _exchange_key(exchange: list[dict[str, Any]]) -> str:
    user, reply = exchange[0], exchange[-1]
    return json.dumps([user.get("started_at"), user.get("contents"), reply.get("started_at")], sort_keys=True)


def merge_records(existing: dict[str, Any], rebuilt: dict[str, Any]) -> dict[str, Any]:
    """``rebuilt`` (from the outputs) merged into ``existing`` (a valid record), for ``consolidate``.

    An exchange is the same when its prompt and times are. What only the existing record holds
    stays (panel turns, exchanges whose output is gone), except an exchange of a cell whose
    output now shows a newer one (a re-run cell): that one is replaced, its spend kept. The
    ledger is the existing one plus the spend of the exchanges added. Merging what is already
    merged changes nothing, so ``consolidate`` run twice writes the same bytes.
    (Answers sent with ``--no-history`` are in no record's turns: counted only when the
    notebook had no record yet.)
    """
    out = copy.deepcopy(existing)
    out.setdefault("sessions", {})
    added: list[tuple[str, dict[str, Any]]] = []
    for name, s in rebuilt["sessions"].items():
        provider = (s.get("provider") or {}).get("name") or "unknown"
        old = out["sessions"].get(name)
        if old is None:
            out["sessions"][name] = copy.deepcopy(s)
            added += [(provider, r) for ex in record_exchanges(s["turns"]) for r in _replies(ex)]
            continue
        mine = record_exchanges(old.get("turns") or [])
        known = {_exchange_key(p) for p in mine}
        fresh = [p for p in record_exchanges(s["turns"]) if _exchange_key(p) not in known]
        if not fresh:
            continue
        rerun = {e[0].get("cell_id") for e in fresh if e[0].get("cell_id") and e[0].get("source", "cell") == "cell"}
        kept = [p for p in mine if not (p[0].get("cell_id") in rerun and p[0].get("source", "cell") == "cell")]
        ordered = sorted(kept + fresh, key=lambda p: str(p[0].get("started_at") or ""))
        old["turns"] = [copy.deepcopy(t) for ex in ordered for t in ex]
        old["provider"], old["system_prompt"] = copy.deepcopy(s["provider"]), s.get("system_prompt")
        added += [(provider, r) for ex in fresh for r in _replies(ex)]
    if added:
        ledger = Ledger()
        ledger.load(validate_record({**out, "sessions": {}})["usage"])
        for provider, reply in added:
            ledger.add(provider, Turn.from_dict(reply))
        out["usage"] = ledger.to_list()
    return out
