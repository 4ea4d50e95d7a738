"""The kernel's side of the front-end protocol (comm target ``jupyter_llmchat``, DESIGN §6-7).

At ``%load_ext``: restore sessions from the notebook file (read-only), then open the comm.

Front end -> kernel:

- ``{"type": "hello", "path", "saved", "record"}`` in answer to the comm's opening. ``path`` is
  the notebook's path as the front end names it; a kernel serves one notebook's record, so a
  hello from another notebook (one switched to this running kernel) is ignored, and said so in
  the next cell's output. Which notebook is ours follows the record's own ``id`` (written once),
  not a path: a hello under a new path whose record carries our id is our notebook, renamed
  (unless our file is still where it was: then it is a copy). ``record`` (the front end's
  in-memory record, which may hold unsaved turns) extends a session only when it holds the
  same turns and more.
- ``{"type": "path", "path", "from"}``: the notebook was renamed or moved while open, from
  ``from`` (the path it said hello with): the kernel follows it and sends the whole record.
- ``{"type": "resync", "path"}``: the front end could not apply an update (its record is not the
  one the update follows): the kernel answers with the whole record.
- ``{"type": "order", "path", "cells": [ids]}``: the notebook's cells in order, sent by the front
  end when they move, are added or deleted (DESIGN §10). With JupyterLab's ``cellId`` and
  ``deletedCells`` in each execute request and the saved file's order read at ``%load_ext``, it
  is one of the order's three sources (``_record/_order.py``); a session's turns follow it.

Kernel -> front end, every message carrying ``path`` (the hello's), so that a front end ignores a
message meant for another notebook on the same kernel:

- ``{"type": "set_metadata", "path", "value": record}``: the whole record, once after a hello,
  and again after a reset, a session change or anything that is not an append.
- ``{"type": "append_turns", "path", "session", "from", "turns", "provider", "system_prompt",
  "usage"}`` after a finished turn: the session's turns from index ``from`` on (its record
  holds exactly ``from`` turns before it; a session that is not there yet starts at 0), its
  provider and system prompt, and the whole spend ledger (one row per provider and model).
  Its size is that of the turn, not of the history (DESIGN §8).
- ``{"type": "replace_exchange", "path", "session", "start", "end", "length", "turns",
  "provider", "system_prompt", "usage"}`` after a cell run again (or placed above cells that
  ran before it): ``turns`` take the place of the session's turns ``start`` to ``end``, on a
  record whose session holds exactly ``length`` turns. As small as ``append_turns``.
- ``{"type": "stale", "path", "cells": [ids]}``: the cells whose recorded answer was made on
  another conversation above them than the one they have now; the front end marks them.
  Sent when that list changes.
- A session's turns set otherwise (cells moved or deleted, a cell that left the session, a
  ``--new`` mark) send one ``replace_exchange`` of the whole exchanges between the turns the
  front end still holds at each end (a deletion is that exchange's size), or, for a cell moved
  past others, two: the moved exchanges out of their place, and into the new one (or the
  exchanges it passed, when they are fewer turns).
- ``{"type": "insert_cell", "path", "cell", "source"}`` (``%%chat --insert``): put ``source``
  into the code cell below cell ``cell`` that was inserted for it (its metadata
  ``jupyter_llmchat.inserted_by`` is ``cell``), else into a new code cell below it.

The record written is held to the limits it is read with (``validate_record``): a record the
kernel would refuse to read is not sent (one warning). A record the kernel refused to read
(unknown version, invalid, too large), from the file or from the hello, is never written
over: the kernel sends nothing for that notebook until ``%chat_reset --all`` replaces it on
purpose (``Bridge.replace_record``).

The spend ledger is ``base + delta``: ``base`` is the restored record's usage, ``delta`` the
answers made in this kernel. A hello whose usage extends ``base`` (an earlier kernel's unsaved
spend, as in Restart Kernel and Run All) becomes the base; once a front end holds our totals, a
hello that extends them replaces both. The kernel never waits for the front end: with no
extension, the comm simply stays closed.

The bridge is the notebook's ``SpendRule`` on the core's spend guard (``_spend.spend_guard``):
every request of every Chat of the kernel is checked against its budget and its ledger, and
every answer's usage lands in that ledger as it arrives. A budget the record holds but the
kernel cannot read refuses every request until ``%chat_budget`` sets one (DESIGN §6).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import uuid
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _sessions
from .._core._chat import Chat, ChatExchange
from .._core._spend import (
    Budget,
    SpendRequest,
    Spent,
    check_request,
    spend_guard,
    unreadable_budget,
)
from .._core._turns import Turn, opens_exchange
from .._errors import BudgetExceeded, RecordError
from .._record._metadata import (
    KEY,
    MAX_RECORD_CHARS,
    MAX_TURNS,
    SCHEMA_VERSION,
    Ledger,
    record_from_outputs,
    session_record,
    turns_follow,
    validate_record,
)
from .._record._order import CellOrder
from ._display import show_line

__all__ = ["Bridge", "current_bridge", "replace_record", "start_bridge"]

TARGET = "jupyter_llmchat"


@dataclass
class _Synced:
    """What the front end holds of one session: its first ``count`` turns, ending with ``last``."""

    chat: weakref.ref[Chat]  # weakly: a replaced session must be freed, not kept here
    count: int
    last: Turn | None
    #: The turns themselves, to tell an exchange replaced in place from any other change.
    turns: tuple[Turn, ...] = ()


class Bridge:
    def __init__(self, shell: Any, magics: Any) -> None:
        self.shell = shell
        self.magics = magics
        self.comm: Any = None
        self._budget_listeners: list[Callable[[], None]] = []
        self.hello_received = False
        #: When the comm opened: a front end's silence well after it means no extension.
        self.opened_at: _dt.datetime | None = None
        #: The notebook file this kernel was started for (None: not known).
        self.path: str | None = self.notebook_path()
        #: The notebook's path as its front end names it (from the hello we accepted).
        self.front_path: str | None = None
        #: Why the notebook's record was refused: nothing is sent while this is set.
        self.refused: str | None = None
        #: The record's own id (DESIGN §6): its notebook is the one whose record carries it,
        #: whatever its path now. Read from the record, or made at the first write.
        self.record_id: str | None = None
        #: Lines to show in the next cell's output: what kept turns out of the record.
        self._notices: list[str] = []
        self._replaced = False
        self._warned_own = False
        self._warned_foreign: set[str] = set()
        self._base = Ledger()
        self._delta = Ledger()
        #: The notebook's whole spend (base + delta), what ``%chat_usage --all`` shows.
        self.ledger = Ledger()
        self._usage_synced = False
        #: The notebook's spend limit (%chat_budget), kept in the record's "budget".
        self.budget = Budget()
        #: Why the record's budget could not be read (None: it could): until %chat_budget sets
        #: one, every request is refused, and the record keeps the budget as it was written.
        self.unreadable_budget: str | None = None
        self._raw_budget: Any = None
        #: Spend the front end has not been sent yet (answers of Chats that are no session).
        self._usage_unsent = False
        # By the object (weakly): an id() is reused by the next Chat once this one is freed.
        self._watched: weakref.WeakSet[Chat] = weakref.WeakSet()
        #: Per session, what the front end holds; None: it must get the whole record next.
        self._synced: dict[str, _Synced] | None = None
        self._sent_chars = 0
        self._noted_missing = False
        #: The notebook's order of cells (DESIGN §10): the sessions' turns follow it.
        self.order = CellOrder()
        #: Per session, the exchanges of deleted cells: a paste or an undo brings them back.
        self._set_aside: weakref.WeakKeyDictionary[Chat, list[list[Turn]]] = (
            weakref.WeakKeyDictionary())
        #: Per session, the cell that last asked a question: a panel question goes after it.
        self._last_cell: weakref.WeakKeyDictionary[Chat, str] = weakref.WeakKeyDictionary()
        #: Per session, the turns its stale cells were last found in, and them.
        self._stale_cache: weakref.WeakKeyDictionary[Chat, tuple[tuple[Turn, ...], list[str]]] = (
            weakref.WeakKeyDictionary())
        #: Per session, the turns restored from the saved file (until the kernel changes them).
        self._restored: weakref.WeakKeyDictionary[Chat, list[Turn]] = weakref.WeakKeyDictionary()
        #: The stale cells the front end was last told of.
        self._stale_sent: list[str] = []

    # -- restore ------------------------------------------------------------------------------

    def notebook_path(self) -> str | None:
        ns = getattr(self.shell, "user_ns", {})
        for candidate in (ns.get("__session__"), os.environ.get("JPY_SESSION_NAME"), ns.get("__vsc_ipynb_file__")):
            if isinstance(candidate, str) and candidate.endswith(".ipynb") and os.path.isfile(candidate):
                return candidate
        if getattr(self.shell, "kernel", None) is None:
            return None  # a terminal: no notebook to look for
        # Headless (nbclient, `jupyter execute`): told no path, but run in the notebook's folder.
        source = _executing_source(self.shell)
        found = find_notebook(os.getcwd(), source) if source else []
        if len(found) > 1 and _one_record(found):
            # Copies of one notebook (papermill's output, written beside its input as it runs,
            # starts as a copy of it): any of them holds the record to replay.
            return found[0]
        if len(found) > 1:
            names = ", ".join(os.path.basename(f) for f in found[:5])
            print(f"jupyter_llmchat: several notebooks here hold this cell ({names}): no answer is "
                  "replayed from any of them; set JPY_SESSION_NAME to the notebook's path "
                  "(papermill: run with --cwd set to the notebook's folder)")
        return found[0] if len(found) == 1 else None

    def restore_from_file(self) -> None:
        path = self.path
        if path is None:
            return
        try:
            with open(path, encoding="utf-8") as f:
                nb = json.load(f)
            record = (nb.get("metadata") or {}).get(KEY)
            cells = nb.get("cells")
            listed = cells if isinstance(cells, list) else []
            ids = [c.get("id") for c in listed if isinstance(c, dict)]
            named = [i for i in ids if isinstance(i, str)]
            if ids and len(named) == len(ids) and _holds_cells(record, named):
                self.order.set(named)  # nbformat 4.5+: cells have ids
            if record is None and isinstance(nb.get("cells"), list):
                # Run headless (nbclient, no extension): the turns are in the answers' outputs, so
                # re-executing the saved notebook can replay them instead of asking again.
                rebuilt = record_from_outputs(nb)
                record = rebuilt if rebuilt["sessions"] else None
        except (OSError, ValueError, AttributeError, TypeError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser goes is unreadable, not a crash.
            # The record itself is judged by the front end's copy, in its hello.
            warnings.warn(f"jupyter_llmchat: could not read {os.path.basename(path)}: {exc}", stacklevel=3)
            return
        if record is not None:
            self.apply(record, replace=True)
            self.reorder()
        if self.record_id is not None and _held_elsewhere(path, self.record_id):
            # A copy (File > Duplicate) carries its original's id: either one is the copy, and
            # ours gets a new id at its first write, so the two are never taken for one.
            self.record_id = uuid.uuid4().hex

    def _refuse(self, reason: str) -> None:
        if self.refused is None:
            self._warn(
                f"jupyter_llmchat: ignoring the notebook's chat record ({reason[:150]}); it is "
                "left as it is and nothing new is recorded in it until `%chat_reset --all` "
                "replaces it",
                stacklevel=5,
            )
        self.refused = reason

    def _warn(self, message: str, stacklevel: int) -> None:
        """One warning; from a front end's message (no cell runs: its stderr is the kernel's,
        which JupyterLab does not show), also shown in the next cell's output."""
        warnings.warn(message, UserWarning, stacklevel=stacklevel)
        if getattr(self.shell, "kernel", None) is not None and \
                (_parent(self.shell).get("header") or {}).get("msg_type") != "execute_request":
            self._notice(message)

    def apply(self, record: Any, *, replace: bool) -> None:
        """Restore from a record: all sessions (``replace``, the file), or only those it
        extends (a front end's hello)."""
        try:
            clean = validate_record(record)
        except RecordError as exc:
            if replace or not self._replaced:
                self._refuse(str(exc))
            return
        if self.record_id is None:
            self.record_id = clean.get("id")
        for name, s in clean["sessions"].items():
            turns = s["turns"]
            # Creating a session is cheap: no request, no server start until it is used.
            chat = _sessions.session(name)
            ours = chat.get_turns()
            # The front end's copy is the notebook as it stands: it wins over what this kernel
            # only read from the saved file, and over turns of ours it holds all of (appended
            # to, or in another order: cells moved while no kernel heard of it).
            from_file = not replace and _same_turns(ours, self._restored.get(chat))
            if (replace and not ours) or from_file or turns_follow(ours, turns):
                if chat.busy:
                    continue
                chat.set_turns(turns)
                if replace:
                    self._restored[chat] = list(chat.get_turns())
                else:
                    self.order.follow(turns)
                if s["system_prompt"] and not chat.system_prompt:
                    chat.system_prompt = s["system_prompt"]
        # A budget set in this kernel (say, by a cell of Run All before the hello) wins.
        if "budget_error" in clean and (replace or not self.budget.active):
            self._unreadable(clean["budget_error"], record.get("budget"))
        elif "budget" in clean and (replace or not self.budget.active):
            self.budget = Budget.from_dict(clean["budget"])
            self.unreadable_budget = self._raw_budget = None
        theirs = Ledger()
        theirs.load(clean["usage"])
        if replace:
            self._base = theirs
        elif self._usage_synced and theirs.extends(self.ledger):
            # It holds our totals already, and more: all of it is the base now.
            self._base, self._delta = theirs, Ledger()
        elif theirs.extends(self._base):
            # An earlier kernel's spend (Restart Kernel and Run All): ours comes on top of it.
            self._base = theirs
        self.ledger = Ledger.sum(self._base, self._delta)

    # -- the budget: installed on the spend guard every request of the kernel passes ------------

    def _unreadable(self, reason: str, raw: Any) -> None:
        """Never lift a budget silently (DESIGN §6): refuse every request until one is set."""
        if self.unreadable_budget is None:
            warnings.warn("jupyter_llmchat: " + unreadable_budget(reason), UserWarning, stacklevel=5)
        self.budget = Budget()
        self.unreadable_budget, self._raw_budget = reason, raw

    def set_budget(self, budget: Budget) -> None:
        """``%chat_budget``: the notebook's budget from now on (also one the record held unread)."""
        self.budget = budget
        self.unreadable_budget = self._raw_budget = None
        self.send()
        for listener in list(self._budget_listeners):
            listener()

    def on_budget_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` whenever ``%chat_budget`` changes the budget (once however often it
        is given); returns a remover."""
        if listener not in self._budget_listeners:
            self._budget_listeners.append(listener)

        def remove() -> None:
            if listener in self._budget_listeners:
                self._budget_listeners.remove(listener)

        return remove

    def check_spend(self, request: SpendRequest, held: Spent) -> Spent:
        """The ``SpendRule`` of the notebook: its budget against its whole ledger."""
        if self.unreadable_budget is not None:
            raise BudgetExceeded(unreadable_budget(self.unreadable_budget))
        return check_request(self.budget, Spent.of(self.ledger.total()), request, held=held)

    def add_spend(self, provider: str, turn: Turn) -> None:
        """Every answer of every Chat of the kernel (a tool round's too) is the notebook's spend."""
        self._delta.add(provider, turn)
        self.ledger.add(provider, turn)
        self._usage_unsent = True

    def after_cell(self) -> None:
        """IPython's post_execute: spend that no session turn carried (a Chat of the user's,
        ``parallel_chat``) goes into the record once per cell, not once per answer; the stale
        cells, if they changed."""
        if self._usage_unsent:
            self.send()
        self.send_stale()

    # -- the order of cells (DESIGN §10) --------------------------------------------------------

    def before_cell(self) -> None:
        """IPython's pre_execute: JupyterLab's ``cellId`` and ``deletedCells`` of the request."""
        metadata = _parent(self.shell).get("metadata")
        if not isinstance(metadata, dict):
            return
        deleted = metadata.get("deletedCells")
        changed = isinstance(deleted, list) and self.order.delete(deleted[:MAX_ORDER_CELLS])
        cell = metadata.get("cellId")
        if isinstance(cell, str) and cell:
            changed = self.order.ran(cell) or changed
        if changed:
            self.reorder()

    def note_cell(self, cell: str, chat: Chat) -> None:
        """A cell runs a question of ``chat`` (in a shell with no execute request to read, too)."""
        self._last_cell[chat] = cell
        if self.order.ran(cell):
            self.reorder()

    def panel_place(self, chat: Chat) -> tuple[str | None, int]:
        """Where a panel question of ``chat`` goes: after the cell of its session that ran last
        (DESIGN §10), and the index in its turns that is."""
        cell = self._last_cell.get(chat)
        return cell, self.order.after(chat.get_turns(), cell)

    def reorder(self) -> None:
        """Every session's turns in the notebook's order; deleted cells' exchanges set aside."""
        for chat in list(_sessions.sessions().values()):
            if chat.busy:
                continue  # the panel is answering: its turn comes in, the next cell arranges it
            turns = chat.get_turns()
            self.order.known(turns)
            aside = self._set_aside.get(chat, [])
            kept, out = self.order.arrange([*turns, *(t for part in aside for t in part)])
            self._set_aside[chat] = out
            if len(kept) != len(turns) or any(a is not b for a, b in zip(kept, turns)):
                chat.set_turns(kept)  # its listener sends the whole record
        self.send_stale()

    def stale_cells(self) -> list[str]:
        """The stale cells of every session (hashing the history: once per change of its turns,
        not at every cell, which would cost ~30 ms a cell at 2,000 turns)."""
        cells: list[str] = []
        for chat in _sessions.sessions().values():
            turns = tuple(chat.get_turns())
            cached = self._stale_cache.get(chat)
            if cached is not None and len(cached[0]) == len(turns) \
                    and all(a is b for a, b in zip(cached[0], turns)):
                found = cached[1]
            else:
                found = self.order.stale(turns)
                self._stale_cache[chat] = (turns, found)
            cells.extend(c for c in found if c not in cells)
        return cells

    def send_stale(self) -> None:
        if not self._may_send():
            return
        cells = self.stale_cells()
        if cells != self._stale_sent and self._post({"type": "stale", "cells": cells}):
            self._stale_sent = cells

    def _on_session(self, name: str, chat: Chat) -> None:
        if chat not in self._watched:
            self._watched.add(chat)
            chat.add_listener(self._on_change)
        self._synced = None
        self.send()

    # -- live updates -------------------------------------------------------------------------

    def _on_change(self, chat: Chat, event: str, exchange: ChatExchange | None = None) -> None:
        if event not in ("turn", "reset", "set"):
            return
        if event == "turn":  # its spend came in as it arrived (add_spend)
            self._show_notices()
            self.send_update(chat, exchange)
            return
        if event == "set":
            self.send_changed(chat)
            return
        self._synced = None
        self.send()

    def record(self) -> dict[str, Any]:
        return self._snapshot()[0]

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, _Synced]]:
        record: dict[str, Any] = {"version": SCHEMA_VERSION, "sessions": {}, "usage": self.ledger.to_list()}
        if self.record_id is not None:
            record["id"] = self.record_id
        if self.budget.active:
            record["budget"] = self.budget.to_dict()
        elif self.unreadable_budget is not None:  # kept as written until %chat_budget replaces it
            record["budget"] = self._raw_budget
        synced: dict[str, _Synced] = {}
        for name, chat in _sessions.sessions().items():
            turns = chat.get_turns()
            record["sessions"][name] = session_record(chat, turns)
            synced[name] = _Synced(weakref.ref(chat), len(turns), turns[-1] if turns else None,
                                   tuple(turns))
        return record, synced

    def _may_send(self) -> bool:
        # Until the extension's hello, nobody may be listening (nbclient, VS Code): send nothing.
        # The hello's handler sends the whole record, so nothing made before it is lost.
        if self.comm is None or not self.hello_received or self.front_path is None:
            return False
        if self.refused is not None:
            return False
        return bool(getattr(self.magics, "record_metadata", True))

    def _too_large(self, reason: str) -> None:
        self._synced = None  # the front end missed this one: the next send is the whole record
        if not self._warned_own:
            self._warned_own = True
            self._warn(
                f"jupyter_llmchat: the chat record is not written into the notebook ({reason}); "
                "it would not be read back. `%chat_reset` makes it smaller.",
                stacklevel=3,
            )

    def send(self) -> None:
        """Send the whole record (``set_metadata``), if it is one we would read back."""
        if not self._may_send():
            return
        self._usage_unsent = False  # tried once: a record too large is not retried every cell
        if self.record_id is None:
            self.record_id = uuid.uuid4().hex  # written once: kept through renames and restarts
        record, synced = self._snapshot()
        try:
            validate_record(record)
            size = len(json.dumps(record))
        except RecordError as exc:
            self._too_large(str(exc))
            return
        if self._post({"type": "set_metadata", "value": record}):
            self._synced = synced
            self._sent_chars = size
            self._usage_synced = True

    def send_update(self, chat: Chat, exchange: ChatExchange | None = None) -> None:
        """After a turn: only what the front end does not hold yet (the turns appended, or the
        exchange replaced in place), else the whole record."""
        if not self._may_send():
            return
        name = next((n for n, c in _sessions.sessions().items() if c is chat), None)
        if name is None or self._synced is None:
            self.send()
            return
        synced = self._synced.get(name) or _Synced(weakref.ref(chat), 0, None)
        turns = chat.get_turns()
        start = synced.count
        appended = (
            synced.chat() is chat
            and start % 2 == 0
            and len(turns) >= start
            and (start == 0 or turns[start - 1] is synced.last)
            and (exchange is None or exchange.at is None or exchange.at == start)
        )
        if not appended:
            self._send_replaced(name, chat, synced, exchange)
            return
        checked = self._checked_part(name, chat, turns[start:])
        if checked is None:
            return
        part, usage, size = checked
        message = {"type": "append_turns", "session": name, "from": start, "turns": part["turns"],
                   "provider": part["provider"], "system_prompt": part["system_prompt"], "usage": usage}
        self._post_part(name, chat, message, size)

    def _post_part(self, name: str, chat: Chat, message: dict[str, Any], size: int) -> None:
        if self._post(message) and self._synced is not None:
            turns = chat.get_turns()
            last = turns[-1] if turns else None
            self._synced[name] = _Synced(weakref.ref(chat), len(turns), last, tuple(turns))
            self._sent_chars += size
            self._usage_unsent = False  # the message carries the whole ledger

    def _send_replaced(
        self, name: str, chat: Chat, synced: _Synced, exchange: ChatExchange | None
    ) -> None:
        """An exchange put in place of others (or between them): that exchange only, when the
        rest is what the front end holds; else the whole record."""
        turns = chat.get_turns()
        old = synced.turns
        at = exchange.at if exchange is not None and exchange.recorded else None
        if at is None or exchange is None or synced.chat() is not chat:
            self.send()
            return
        new, gone = len(exchange.turns), exchange.replaced
        same = (
            len(old) == len(turns) - new + gone
            and all(a is b for a, b in zip(old[:at], turns[:at]))
            and all(a is b for a, b in zip(old[at + gone:], turns[at + new:]))
        )
        if not same:
            self.send()
            return
        self._post_replace(name, chat, at, at + gone, len(old), turns[at:at + new])

    def send_changed(self, chat: Chat) -> None:
        """A session's turns set outside an answer (cells moved or deleted, a cell that left
        the session, a system prompt): the turns that differ from what the front end holds, as
        one ``replace_exchange`` of the span between the turns both still share at each end
        (O(what changed), DESIGN §7); else the whole record."""
        if not self._may_send():
            return
        name = next((n for n, c in _sessions.sessions().items() if c is chat), None)
        synced = self._synced.get(name) if self._synced is not None and name else None
        if name is None or synced is None or synced.chat() is not chat:
            self._synced = None
            self.send()
            return
        old, turns = synced.turns, chat.get_turns()
        head = 0
        while head < min(len(old), len(turns)) and old[head] is turns[head]:
            head += 1
        tail = 0
        while tail < min(len(old), len(turns)) - head and old[-1 - tail] is turns[-1 - tail]:
            tail += 1
        # Whole exchanges only, so the part is a valid run of turns (tool pairs together).
        while head > 0 and not (_boundary(old, head) and _boundary(turns, head)):
            head -= 1
        while tail > 0 and not (_boundary(old, len(old) - tail)
                                and _boundary(turns, len(turns) - tail)):
            tail -= 1
        middle = old[head:len(old) - tail]
        k = _rotation(middle, turns[head:len(turns) - tail])
        if k is None:
            self._post_replace(name, chat, head, len(old) - tail, len(old),
                               turns[head:len(turns) - tail])
            return
        # One block of exchanges moved past the others: the smaller side travels, in two
        # messages (out of its place, into the other), so a cell moved to the top costs its
        # exchange, not the exchanges it passed.
        m = len(middle)
        if k <= m - k:
            self._post_replace(name, chat, head, head + k, len(old), [])
            self._post_replace(name, chat, head + m - k, head + m - k, len(old) - k,
                               list(middle[:k]))
        else:
            self._post_replace(name, chat, head + k, head + m, len(old), [])
            self._post_replace(name, chat, head, head, len(old) - (m - k), list(middle[k:]))

    def _checked_part(
        self, name: str, chat: Chat, new: list[Turn]
    ) -> tuple[dict[str, Any], list[Any], int] | None:
        """The record of ``new`` turns of a session, its usage and size, held to the same limits
        as on read (with the whole record's size and length); None, and said, when past them."""
        part = session_record(chat, new)
        usage = self.ledger.to_list()
        try:
            validate_record({"version": SCHEMA_VERSION, "sessions": {name: part}, "usage": usage})
            size = len(json.dumps(part["turns"]))
            if len(chat.get_turns()) > MAX_TURNS:
                raise RecordError(f"session {name!r} has more than {MAX_TURNS} turns")
            if self._sent_chars + size > MAX_RECORD_CHARS:
                raise RecordError("the record is too large")
        except RecordError as exc:
            self._too_large(str(exc))
            return None
        return part, usage, size

    def _post_replace(
        self, name: str, chat: Chat, start: int, end: int, length: int, new: list[Turn]
    ) -> None:
        """``replace_exchange``: ``new`` in place of the front end's turns ``start`` to ``end``
        of the ``length`` it holds; held to the limits of the record as a whole."""
        checked = self._checked_part(name, chat, new)
        if checked is None:
            return
        part, usage, size = checked
        message = {"type": "replace_exchange", "session": name, "start": start, "end": end,
                   "length": length, "turns": part["turns"], "provider": part["provider"],
                   "system_prompt": part["system_prompt"], "usage": usage}
        self._post_part(name, chat, message, size)

    def replace_record(self) -> None:
        """Replace the notebook's record with the kernel's, on purpose (``%chat_reset --all``).

        The one way to write over a record this kernel refused to read.
        """
        self.refused = None
        self._replaced = True
        self._synced = None
        self.send()

    def insert_code(self, cell_id: str, code: str) -> bool:
        """``%%chat --insert`` where the extension listens: ``{"type": "insert_cell", "cell",
        "source"}`` asks it to put ``code`` in the cell below ``cell_id`` that it inserted for
        that cell before (marked in its metadata), or in a new code cell below. False where no
        front end speaks the comm (the caller falls back to ``set_next_input``). Independent of
        the record: a refused record or ``record_metadata = False`` still inserts."""
        if self.comm is None or not self.hello_received or self.front_path is None:
            return False
        return self._post({"type": "insert_cell", "cell": cell_id, "source": code})

    def _post(self, data: dict[str, Any]) -> bool:
        try:
            self.comm.send({**data, "path": self.front_path})
            return True
        except Exception as exc:  # a closed comm (no extension) is normal
            self.comm = None
            print(f"jupyter_llmchat: notebook metadata not sent ({exc})", file=sys.stderr)
            return False

    def open_comm_when_spoken(self) -> None:
        """Open the comm now if this request comes from a front end that speaks it, else at the
        first request that does: a client without our comm target (nbclient, `jupyter
        execute`) logs "No handler found for comm target" for a comm opened at it."""
        if getattr(self.shell, "kernel", None) is None:
            return
        if _speaks_comm(self.shell):
            self.open_comm()
            return
        events = getattr(self.shell, "events", None)
        if events is None:
            return

        def pre_execute() -> None:
            if self.comm is None and _speaks_comm(self.shell):
                events.unregister("pre_execute", pre_execute)
                self.open_comm()

        events.register("pre_execute", pre_execute)

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
        self.opened_at = _dt.datetime.now(_dt.timezone.utc)

    def missing_extension_note(self, cell_id: str | None) -> str | None:
        """Once per kernel, a line for a cell that a notebook front end runs (it sends cell ids,
        as JupyterLab and Notebook 7 do) although its jupyter-llmchat extension never answered.

        Said only for a request the front end sent well after the comm opened: its extension,
        had it been there, answered before sending it, and the hello (same channel, in order)
        was read first. Under Run All every request was sent before the hello: nothing is said.
        """
        if cell_id is None or self.hello_received or self._noted_missing:
            return None
        opened = self.opened_at
        sent = _request_date(self.shell)
        if opened is None or sent is None or sent < opened + _dt.timedelta(seconds=HELLO_GRACE_S):
            return None
        self._noted_missing = True
        return ("jupyter_llmchat: the notebook's jupyter-llmchat extension did not answer, so the "
                "chat is not saved in the notebook and %chat_panel shows inline. It needs JupyterLab "
                "4.2+ or Notebook 7.2+; `jupyter labextension list` says if it is installed and "
                "compatible (then reload the page).")

    def owns(self, path: Any, record_id: Any = None) -> bool:
        """Whether ``path`` (a front end's name for its notebook), whose record carries
        ``record_id``, is this kernel's notebook."""
        if not isinstance(path, str) or not path:
            return False
        if self.front_path is not None and path == self.front_path:
            return True
        gone = self.path is not None and not os.path.isfile(self.path)
        if self.record_id is not None and record_id == self.record_id:
            # Our record under another name: renamed (our file is gone), or a copy of it (our
            # notebook is still where it was), which is another notebook.
            return self.path is None or gone or _same_file(self.path, path)
        if self.path is not None and _same_file(self.path, path):
            return True
        if gone and self.record_id is None:
            return True  # renamed before anything was recorded: the first to say hello is ours
        # No file known (a kernel started without one): the first notebook to say hello is ours.
        return self.path is None and self.front_path is None

    def _renamed(self, path: str) -> None:
        """Our notebook is at ``path`` now (the front end's name): follow it."""
        if self.path is not None and self.front_path is not None and path != self.front_path:
            self.path = _rebased(self.path, self.front_path, path)
        self.front_path = path

    def _notice(self, line: str) -> None:
        if line not in self._notices:
            self._notices.append(line)

    def _show_notices(self) -> None:
        """In the cell's output, not only on the kernel's stderr (which JupyterLab does not
        show for a comm message): what kept turns out of the notebook's record."""
        while self._notices:
            show_line(self.shell, self._notices.pop(0))

    def _ours(self, data: dict[str, Any]) -> bool:
        """A message from the front end we said hello to (not another notebook's)."""
        return self.front_path is not None and data.get("path") == self.front_path

    def _on_msg(self, msg: dict[str, Any]) -> None:
        data = (msg.get("content") or {}).get("data") or {}
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "hello":
            path = data.get("path")
            record = data.get("record")
            record_id = record.get("id") if isinstance(record, dict) else None
            if not self.owns(path, record_id):
                if str(path) not in self._warned_foreign:
                    self._warned_foreign.add(str(path))
                    line = (f"jupyter_llmchat: this kernel keeps the chat record of "
                            f"{self.front_path or self.path}; {str(path)[:200]!r} shares it and "
                            "gets no record")
                    print(line, file=sys.stderr)
                    self._notice(line)
                return
            if isinstance(path, str):
                self._renamed(path)
            self.hello_received = True
            self._synced = None
            if data.get("record") is not None:
                self.apply(data["record"], replace=False)
                self.reorder()  # its turns, in the order this kernel knows
            self.send()
            self._stale_sent = []
            self.send_stale()
        elif kind == "order" and self._ours(data):
            cells = data.get("cells")
            if isinstance(cells, list) and len(cells) <= MAX_ORDER_CELLS and self.order.set(cells):
                self.reorder()
        elif kind == "resync" and self.front_path is not None and data.get("path") == self.front_path:
            self._synced = None
            self.send()
        elif kind == "path" and self.front_path is not None and data.get("from") == self.front_path:
            # Renamed or moved while open: the same notebook, the same record, a new name.
            if isinstance(data.get("path"), str) and data["path"]:
                self._renamed(data["path"])
                self._synced = None
                self.send()


#: The most cells an order may name (a notebook of more is not one a person reads).
MAX_ORDER_CELLS = 100_000

#: Headless look-up bounds: notebooks read in the working directory, and bytes read in all.
MAX_LOOKUP_FILES = 64
MAX_LOOKUP_BYTES = 256_000_000


def _holds_cells(record: Any, ids: list[str]) -> bool:
    """Whether the saved file's cells are the ones the record's exchanges were asked in: a
    tool that gave every cell a new id would otherwise make each exchange look deleted (and a
    Run All ask everything again). A record with no cell ids yet takes the file's order."""
    # Read as untrusted: a record of any shape is judged (and refused) by apply, not here.
    sessions = record.get("sessions") if isinstance(record, dict) else None
    recorded = {
        t.get("cell_id")
        for s in (sessions.values() if isinstance(sessions, dict) else ()) if isinstance(s, dict)
        for t in _list(s.get("turns")) if isinstance(t, dict) and isinstance(t.get("cell_id"), str)
    }
    return not recorded or bool(recorded & set(ids))


def _boundary(turns: tuple[Turn, ...] | list[Turn], i: int) -> bool:
    """Whether an exchange begins at ``turns[i]`` (or the turns end there)."""
    return i <= 0 or i >= len(turns) or opens_exchange(turns[i])


def _rotation(old: tuple[Turn, ...], new: list[Turn]) -> int | None:
    """``k`` where ``new`` is ``old[k:] + old[:k]`` (the same turns, by identity) and an
    exchange begins at ``old[k]``; None when it is not such a move."""
    if len(old) != len(new) or len(old) < 2:
        return None
    k = next((i for i in range(1, len(old)) if old[i] is new[0]), None)
    if k is None or not _boundary(old, k):
        return None
    moved = (*old[k:], *old[:k])
    return k if all(a is b for a, b in zip(moved, new)) else None


def _same_turns(ours: list[Turn], restored: list[Turn] | None) -> bool:
    """Whether a session still holds exactly the turns it was restored with, in any order (the
    notebook's order may have arranged them), and none of its own."""
    return (restored is not None and bool(ours) and len(ours) == len(restored)
            and {id(t) for t in ours} == {id(t) for t in restored})


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _parent(shell: Any) -> dict[str, Any]:
    """The request the kernel is executing (ipykernel's parent message), or {}."""
    get_parent = getattr(getattr(shell, "kernel", None), "get_parent", None)
    try:
        parent = get_parent("shell") if get_parent is not None else None
    except Exception:  # an older or other kernel: no parent to read
        parent = None
    return parent if isinstance(parent, dict) else {}


def _executing_source(shell: Any) -> str | None:
    code = (_parent(shell).get("content") or {}).get("code")
    if isinstance(code, str):
        return code
    raw = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None)
    return raw[-1] if raw else None


def _speaks_comm(shell: Any) -> bool:
    """JupyterLab and Notebook 7 put the cell's id and the deleted cells in every execute
    request's metadata; the clients that handle no comm of ours (nbclient, `jupyter execute`,
    papermill) put nothing there."""
    metadata = _parent(shell).get("metadata")
    return isinstance(metadata, dict) and ("cellId" in metadata or "deletedCells" in metadata)


def find_notebook(directory: str, source: str) -> list[str]:
    """The ``.ipynb`` files of ``directory`` with a code cell whose source is ``source``
    (bounded: at most ``MAX_LOOKUP_FILES`` files and ``MAX_LOOKUP_BYTES`` read)."""
    wanted = source.strip()
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".ipynb"))
    except OSError:
        return []
    found: list[str] = []
    budget = MAX_LOOKUP_BYTES
    for name in names[:MAX_LOOKUP_FILES]:
        path = os.path.join(directory, name)
        try:
            size = os.path.getsize(path)
            if size > min(budget, MAX_RECORD_CHARS * 2):
                continue
            budget -= size
            with open(path, encoding="utf-8") as f:
                cells = json.load(f).get("cells")
        except (OSError, ValueError, AttributeError, RecursionError):
            continue  # not a notebook we could read: not ours either
        for cell in cells if isinstance(cells, list) else []:
            text = cell.get("source") if isinstance(cell, dict) and cell.get("cell_type") == "code" else None
            text = "".join(text) if isinstance(text, list) and all(isinstance(t, str) for t in text) else text
            if isinstance(text, str) and text.strip() == wanted:
                found.append(path)
                break
    return found


def _one_record(paths: list[str]) -> bool:
    """Whether the notebooks ``paths`` (found by ``find_notebook``, so bounded) hold one and the
    same chat record."""
    records = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                records.append((json.load(f).get("metadata") or {}).get(KEY))
        except (OSError, ValueError, AttributeError, RecursionError):
            return False
    return records[0] is not None and all(r == records[0] for r in records[1:])


def _held_elsewhere(path: str, record_id: str) -> bool:
    """Whether another notebook in ``path``'s folder holds a record with ``record_id``
    (bounded as the headless look-up is; a raw search, the id being random)."""
    directory, name = os.path.split(os.path.abspath(path))
    needle = json.dumps(record_id).encode()
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".ipynb") and n != name)
    except OSError:
        return False
    budget = MAX_LOOKUP_BYTES
    for other in names[:MAX_LOOKUP_FILES]:
        try:
            with open(os.path.join(directory, other), "rb") as f:
                data = f.read(budget)
        except OSError:
            continue
        budget -= len(data)
        if needle in data:
            return True
        if budget <= 0:
            break
    return False


def _rebased(kernel_path: str, old_front: str, new_front: str) -> str:
    """The kernel's absolute path of a notebook the front end renamed from ``old_front`` (a
    path relative to the server's root) to ``new_front``."""
    mine = os.path.abspath(kernel_path).replace(os.sep, "/")
    old = os.path.normpath(old_front).replace(os.sep, "/").lstrip("/")
    root = mine[: -len(old)] if mine.endswith(old) else os.path.dirname(mine) + "/"
    return os.path.normpath(root + os.path.normpath(new_front).replace(os.sep, "/").lstrip("/"))


#: Seconds a front end has to answer the comm's opening before its silence means no extension.
HELLO_GRACE_S = 2.0


def _request_date(shell: Any) -> _dt.datetime | None:
    """When the front end sent the running cell's execute request (its header's date)."""
    try:
        date = (shell.kernel.get_parent() or {}).get("header", {}).get("date")
    except Exception:  # no kernel (terminal IPython): no front end to wait for
        return None
    if isinstance(date, str):
        try:
            date = _dt.datetime.fromisoformat(date.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(date, _dt.datetime):
        return None
    return date if date.tzinfo is not None else date.replace(tzinfo=_dt.timezone.utc)


def missing_extension_note(cell_id: str | None) -> str | None:
    bridge = current_bridge()
    return bridge.missing_extension_note(cell_id) if bridge is not None else None


def _same_file(kernel_path: str, front_path: str) -> bool:
    """The kernel knows its notebook by an absolute path, the front end relative to its root."""
    mine = os.path.abspath(kernel_path).replace(os.sep, "/")
    theirs = os.path.normpath(front_path).replace(os.sep, "/").lstrip("/")
    return mine == theirs or mine.endswith("/" + theirs)


def start_bridge(shell: Any, magics: Any) -> Bridge:
    bridges = _sessions.registry.bridges  # one bridge per shell
    bridge: Bridge | None = bridges.get(shell)
    if bridge is None:
        bridge = bridges[shell] = Bridge(shell, magics)
        _sessions.on_session(bridge._on_session)
        events = getattr(shell, "events", None)
        if events is not None:
            events.register("post_execute", bridge.after_cell)
            events.register("pre_execute", bridge.before_cell)
        bridge.restore_from_file()
        bridge.open_comm_when_spoken()
    else:
        bridge.magics = magics
    spend_guard.install(bridge)  # the notebook's budget holds for every request of the kernel
    return bridge


def current_bridge() -> Bridge | None:
    return next(iter(_sessions.registry.bridges.values()), None)


def replace_record() -> None:
    """``%chat_reset --all``: the notebook's record becomes the kernel's, even a refused one."""
    bridge = current_bridge()
    if bridge is not None:
        bridge.replace_record()
