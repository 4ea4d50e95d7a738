"""The notebook's order of cells, and the conversation it makes (DESIGN §10, §7).

A ``%%chat`` cell continues the exchanges of the cells above it as the notebook stands, not
the order they ran in. This module keeps that order and applies it to a session's turns; it
knows turns and cell ids only (no IPython), so the kernel, headless runs and tests share it.

The order's sources, fed by the Jupyter layer: the saved file's cells at ``%load_ext``,
JupyterLab's ``cellId``/``deletedCells`` in every execute request, and the front end's
``order`` messages. With none of them (terminal IPython, VS Code) the order of first runs
stands in: a cell the order does not hold yet goes after the others when it first runs.

A session's turns are kept in this order: ``arrange`` sorts its exchanges by their cell's
place and takes out those of deleted cells (kept aside, so a paste or an undo that brings the
cell back brings its exchange back); ``span`` says where a cell's exchange is, or where it
would go, so a re-run replaces it in place and the cells below stay. ``stale`` names the cells
whose answer was made on another conversation above them than the one they have now: the
``history`` part of its replay key (``_core/_replay.py``) no longer matches, so the badge says
exactly what running the cell will do (ask again).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._core._replay import KEY_FIELD, RequestKey, history_digest
from .._core._spend import history_hash
from .._core._turns import Turn, exchange_end, starts_conversation

__all__ = [
    "CellOrder",
    "Exchange",
    "exchange_spans",
]


@dataclass(frozen=True)
class Exchange:
    """One exchange of a session: ``turns[start:end]``, and the cell it belongs to (a panel
    question belongs after ``anchor``, the cell that ran last before it)."""

    start: int
    end: int
    anchor: str | None
    panel: bool


def exchange_spans(turns: Sequence[Turn]) -> list[Exchange]:
    """The exchanges of ``turns`` (the core's one rule) as spans, with the cell each belongs to."""
    out: list[Exchange] = []
    i = 0
    while i < len(turns):
        end = exchange_end(turns, i)
        meta = turns[i].meta
        panel = meta.get("source") == "panel"
        anchor = meta.get("after_cell" if panel else "cell_id")
        out.append(Exchange(i, end, anchor if isinstance(anchor, str) else None, panel))
        i = end
    return out


class CellOrder:
    """The notebook's cell ids in order, from whichever source spoke last."""

    def __init__(self) -> None:
        self._cells: list[str] = []
        self._pos: dict[str, int] = {}
        #: True once a notebook (its file or its front end) gave the order: a cell id it lacks
        #: was deleted. Before that the order is the order of first runs, and a cell it lacks
        #: has simply not run yet.
        self.from_notebook = False
        #: Cells said deleted by an execute request's ``deletedCells`` (until they come back).
        self._deleted: set[str] = set()

    @property
    def cells(self) -> list[str]:
        return list(self._cells)

    def set(self, cells: Sequence[str]) -> bool:
        """The notebook's order (its file, or the front end's message); True if it changed."""
        clean = list(dict.fromkeys(c for c in cells if isinstance(c, str) and c))
        changed = clean != self._cells or not self.from_notebook
        self._cells = clean
        self._pos = {c: i for i, c in enumerate(clean)}
        self._deleted -= self._pos.keys()
        self.from_notebook = True
        return changed

    def delete(self, cells: Iterable[str]) -> bool:
        """Cells the front end deleted (``deletedCells``); True if any was in the order."""
        gone = {c for c in cells if isinstance(c, str)} - self._deleted
        self._deleted |= gone
        if not gone & self._pos.keys():
            return False
        self._cells = [c for c in self._cells if c not in gone]
        self._pos = {c: i for i, c in enumerate(self._cells)}
        return True

    def ran(self, cell: str) -> bool:
        """A cell runs: one the order lacks goes last (the order of first runs; in a notebook,
        a new cell, until the front end's next order places it). True if the order changed."""
        if cell in self._pos:
            return False
        self._deleted.discard(cell)  # run again after an undo
        self._pos[cell] = len(self._cells)
        self._cells.append(cell)
        return True

    def known(self, turns: Sequence[Turn]) -> None:
        """Cells of restored turns the order lacks go last, in the record's order (an earlier
        kernel's first runs), so that, with no notebook to say otherwise, they keep their place."""
        if self.from_notebook:
            return
        for ex in exchange_spans(turns):
            if ex.anchor is not None and not ex.panel and ex.anchor not in self._deleted:
                self.ran(ex.anchor)

    def _gone(self, anchor: str | None) -> bool:
        if anchor is None:
            return False
        return anchor in self._deleted or (self.from_notebook and anchor not in self._pos)

    def follow(self, turns: Sequence[Turn]) -> None:
        """A front end's record was taken (at its hello): with no notebook order yet, its cells
        go first, in the record's order (the notebook as it stands), before cells only run here."""
        if self.from_notebook:
            return
        theirs = [ex.anchor for ex in exchange_spans(turns)
                  if ex.anchor is not None and not ex.panel and ex.anchor not in self._deleted]
        first = list(dict.fromkeys(theirs))
        self._cells = first + [c for c in self._cells if c not in set(first)]
        self._pos = {c: i for i, c in enumerate(self._cells)}

    def arrange(self, turns: Sequence[Turn]) -> tuple[list[Turn], list[list[Turn]]]:
        """``turns`` in the notebook's order, and the exchanges of deleted cells taken out.

        Exchanges of one cell keep their order; a panel question follows its cell's exchanges;
        an exchange with no cell (a ``Chat`` used from Python, terminal IPython) stays after
        the exchange it followed."""
        keyed: list[tuple[tuple[int, int, int, int], list[Turn]]] = []
        out: list[list[Turn]] = []
        anchor: tuple[int, int, int] = (-1, 0, -1)
        for k, ex in enumerate(exchange_spans(turns)):
            part = list(turns[ex.start:ex.end])
            if self._gone(ex.anchor):
                out.append(part)
                continue
            if ex.anchor is not None and ex.anchor in self._pos:
                anchor = (self._pos[ex.anchor], 1 if ex.panel else 0, k)
                keyed.append(((*anchor, 0), part))
            else:
                keyed.append(((*anchor, k + 1), part))
        keyed.sort(key=lambda item: item[0])
        return [t for _, part in keyed for t in part], out

    def span(self, turns: Sequence[Turn], cell: str) -> tuple[int, int]:
        """Where ``cell``'s exchanges are in ``turns`` (arranged), or, if it has none, the
        empty span where its exchange goes: after the exchanges of the cells above it."""
        where = self._pos.get(cell)
        start = end = None
        insert = 0
        for ex in exchange_spans(turns):
            if ex.anchor == cell and not ex.panel:
                start = ex.start if start is None else start
                end = ex.end
            elif start is None:
                pos = self._pos.get(ex.anchor) if ex.anchor is not None else None
                before = where is None or (pos is not None and pos < where)
                if before or (pos is None and insert == ex.start):
                    insert = ex.end  # an exchange with no cell goes with the one it follows
        if start is not None and end is not None:
            return start, end
        return insert, insert

    def after(self, turns: Sequence[Turn], cell: str | None) -> int:
        """Where a panel question asked after ``cell`` ran goes in ``turns`` (arranged): after
        that cell's exchanges and the panel questions already there (None: at the end)."""
        if cell is None:
            return len(turns)
        start, end = self.span(turns, cell)
        for ex in exchange_spans(turns):
            if ex.start == end and ex.panel and ex.anchor == cell:
                end = ex.end
        return end

    def stale(self, turns: Sequence[Turn]) -> list[str]:
        """Cells whose recorded answer was made on another conversation above than their
        exchange has now (a cell above was deleted, moved, or asked again since): the history
        part of its replay key differs. The conversation above starts at the last ``--new``
        exchange (``conversation_start``). An exchange with no version 2 key is not judged."""
        found: list[str] = []
        h = history_hash([])
        for ex in exchange_spans(turns):
            user = turns[ex.start]
            if starts_conversation(user):
                h = history_hash([])  # --new: nothing above it is its conversation
            if ex.anchor is not None and not ex.panel and ex.anchor not in found:
                key = RequestKey.from_dict(user.meta.get(KEY_FIELD))
                if key is not None and key.history != history_digest(h):
                    found.append(ex.anchor)
            history_hash(turns[ex.start:ex.end], into=h)
        return found
