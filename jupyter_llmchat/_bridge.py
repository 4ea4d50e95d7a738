"""The kernel's side of the front-end protocol (comm target ``jupyter_llmchat``).

At ``%load_ext``: restore sessions from the notebook file (read-only), then open the comm.
The front end answers ``hello`` with its in-memory record, which extends a session only when it
holds the same turns and more. After every finished turn, reset or session change the kernel
sends ``set_metadata`` with the whole record; the front end writes it into the notebook model.
The kernel never waits for the front end: with no extension, the comm simply stays closed.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

from . import _sessions
from ._chat import Chat
from ._metadata import (
    KEY,
    Ledger,
    RecordError,
    build_record,
    record_from_outputs,
    turns_extend,
    validate_record,
)
from ._spend import Budget

__all__ = ["Bridge", "start_bridge"]

TARGET = "jupyter_llmchat"


class Bridge:
    def __init__(self, shell: Any, magics: Any) -> None:
        self.shell = shell
        self.magics = magics
        self.comm: Any = None
        self.hello_received = False
        self.opened_in: int | None = None
        self.ledger = Ledger()
        #: The notebook's spend limit (%chat_budget), kept in the record's "budget".
        self.budget = Budget()
        self._watched: set[int] = set()

    # -- restore ------------------------------------------------------------------------------

    def notebook_path(self) -> str | None:
        ns = getattr(self.shell, "user_ns", {})
        for candidate in (ns.get("__session__"), os.environ.get("JPY_SESSION_NAME"), ns.get("__vsc_ipynb_file__")):
            if isinstance(candidate, str) and candidate.endswith(".ipynb") and os.path.isfile(candidate):
                return candidate
        return None

    def restore_from_file(self) -> None:
        path = self.notebook_path()
        if path is None:
            return
        try:
            with open(path, encoding="utf-8") as f:
                nb = json.load(f)
            record = (nb.get("metadata") or {}).get(KEY)
            if record is None and isinstance(nb.get("cells"), list):
                # Run headless (nbclient, no extension): the turns are in the answers' outputs, so
                # re-executing the saved notebook can replay them instead of asking again.
                rebuilt = record_from_outputs(nb)
                record = rebuilt if rebuilt["sessions"] else None
        except (OSError, ValueError, AttributeError, TypeError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser goes is unreadable, not a crash.
            warnings.warn(f"jupyter_llmchat: could not read {os.path.basename(path)}: {exc}", stacklevel=2)
            return
        if record is not None:
            self.apply(record, replace=True)

    def apply(self, record: Any, *, replace: bool) -> None:
        """Restore from a record: all sessions (``replace``), or only those it extends."""
        try:
            clean = validate_record(record)
        except RecordError as exc:
            warnings.warn(
                f"jupyter_llmchat: ignoring the notebook's chat record: {exc}", UserWarning, stacklevel=3
            )
            return
        changed = False
        for name, s in clean["sessions"].items():
            turns = s["turns"]
            # Creating a session is cheap: no request, no server start until it is used.
            chat = _sessions.session(name)
            if (replace and not chat.get_turns()) or turns_extend(chat.get_turns(), turns):
                if chat.busy:
                    continue
                chat.set_turns(turns)
                if s["system_prompt"] and not chat.system_prompt:
                    chat.system_prompt = s["system_prompt"]
                changed = True
        if "budget" in clean:
            self.budget = Budget.from_dict(clean["budget"])
        # The spend ledger only grows: take the record's when it counts more answers than ours.
        if replace or _ledger_total(clean["usage"]) > self._ledger_turns():
            self.ledger.load(clean["usage"])
        if changed:
            self.send()

    def _ledger_turns(self) -> int:
        return sum(r.turns for r in self.ledger.rows.values())

    def _on_session(self, name: str, chat: Chat) -> None:
        if id(chat) not in self._watched:
            self._watched.add(id(chat))
            chat.add_listener(self._on_change)
        self.send()

    # -- live updates -------------------------------------------------------------------------

    def _on_change(self, chat: Chat, event: str) -> None:
        if event not in ("turn", "reset", "set"):
            return
        if event == "turn":
            exchange = getattr(chat, "last_exchange", None)
            if exchange is not None:
                self.ledger.add(chat.provider.name, exchange[1])
        self.send()

    def record(self) -> dict[str, Any]:
        return build_record(_sessions.sessions(), self.ledger, self.budget)

    def send(self) -> None:
        # Until the extension's hello, nobody may be listening (nbclient, VS Code): send nothing.
        # The hello's handler sends the whole record, so nothing made before it is lost.
        if self.comm is None or not self.hello_received:
            return
        if not getattr(self.magics, "record_metadata", True):
            return
        try:
            self.comm.send({"type": "set_metadata", "value": self.record()})
        except Exception as exc:  # a closed comm (no extension) is normal
            self.comm = None
            print(f"jupyter_llmchat: notebook metadata not sent ({exc})", file=sys.stderr)

    def open_comm(self) -> None:
        if getattr(self.shell, "kernel", None) is None:
            return
        try:
            from comm import create_comm

            comm = create_comm(target_name=TARGET, data={"type": "open", "version": 1})
        except Exception:
            return
        comm.on_msg(self._on_msg)
        comm.on_close(lambda msg: setattr(self, "comm", None))
        self.comm = comm
        self.opened_in = getattr(self.shell, "execution_count", None)

    def front_end_may_be_ready(self) -> bool:
        """False once it is clear no extension answered (the chat panel cannot be shown).

        Its hello arrives between cells, so in the cell that opened the comm we cannot know yet.
        """
        if self.comm is None:
            return False
        return self.hello_received or self.opened_in == getattr(self.shell, "execution_count", None)

    def _on_msg(self, msg: dict[str, Any]) -> None:
        data = (msg.get("content") or {}).get("data") or {}
        if not isinstance(data, dict):
            return
        if data.get("type") == "hello":
            self.hello_received = True
            if data.get("record") is not None:
                self.apply(data["record"], replace=False)
            self.send()


_BRIDGES: dict[int, Bridge] = {}


def start_bridge(shell: Any, magics: Any) -> Bridge:
    bridge = _BRIDGES.get(id(shell))
    if bridge is None:
        bridge = _BRIDGES[id(shell)] = Bridge(shell, magics)
        _sessions.on_session(bridge._on_session)
        bridge.restore_from_file()
        bridge.open_comm()
    else:
        bridge.magics = magics
    return bridge


def current_bridge() -> Bridge | None:
    return next(iter(_BRIDGES.values()), None)


def _ledger_total(rows: list[dict[str, Any]]) -> int:
    return sum(r.get("turns") or 0 for r in rows)
