"""Token accounting and prices.

Prices come from ``genai-prices``, matched on provider and model; anything it does not know
costs None ("n/a"), never a guessed 0. ``genai_prices`` (and pydantic under it) is imported on
the first priced turn, not at import time.
"""

from __future__ import annotations

import decimal
import logging
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._turns import Tokens, Turn

_log = logging.getLogger("jupyter_llmchat")
#: (price provider, model) whose price lookup raised, already logged (once each).
_price_failures: set[tuple[str, str]] = set()

__all__ = [
    "FREE",
    "Ledger",
    "UsageRow",
    "cost_of",
    "format_cost",
    "format_limit",
    "format_row_cost",
    "format_tokens",
]

#: The price provider of models known to cost nothing (the bundled local model): cost 0.0, and
#: its provider says it is free (``OpenAICompatible.free``), on every answer (``Turn.free``).
FREE = "free"


@dataclass
class UsageRow:
    """Totals for one (provider, model), or of any set of answers.

    The one rule for adding answers up: a total is None while no answer reported it (unknown,
    never a made-up 0); answers whose tokens or cost were unknown are counted, so a total known
    only in part can say so ("+").
    """

    provider: str
    model: str
    turns: int = 0
    input: int | None = None
    output: int | None = None
    cached: int | None = None
    cost: float | None = None
    #: Turns whose tokens (or price) were unknown, so the totals above undercount them.
    unknown_tokens: int = 0
    unknown_cost: int = 0
    #: Answers known to have cost nothing (``Turn.free``: their provider said so).
    free_turns: int = 0

    @property
    def free(self) -> bool:
        """Every answer counted is known to cost nothing (the bundled model's), and there is one."""
        return self.turns > 0 and self.free_turns == self.turns

    @property
    def complete_cost(self) -> float | None:
        """The cost when every answer's is known (and there is one), else None."""
        return None if self.unknown_cost or not self.turns else self.cost

    def add(self, tokens: Tokens | None, cost: float | None, free: bool = False) -> None:
        self.turns += 1
        self.free_turns += free
        tok = tokens or Tokens()
        if not tok.known:
            self.unknown_tokens += 1
        self.input = _add(self.input, tok.input)
        self.output = _add(self.output, tok.output)
        self.cached = _add(self.cached, tok.cached)
        if cost is None:
            self.unknown_cost += 1
        else:
            self.cost = (self.cost or 0.0) + cost

    def add_turns(self, turns: Iterable[Turn]) -> UsageRow:
        """Add the assistant turns among ``turns`` that a request produced (returns self)."""
        for t in turns:
            if t.requested:
                self.add(t.tokens, t.cost, t.free)
        return self

    def merge(self, other: UsageRow) -> None:
        self.turns += other.turns
        self.input = _add(self.input, other.input)
        self.output = _add(self.output, other.output)
        self.cached = _add(self.cached, other.cached)
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost
        self.unknown_tokens += other.unknown_tokens
        self.unknown_cost += other.unknown_cost
        self.free_turns += other.free_turns

    def to_dict(self) -> dict[str, Any]:
        """The notebook record's ``usage`` row form (``free`` only where true: DESIGN §6)."""
        d: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "turns": self.turns,
            "input": self.input,
            "output": self.output,
            "cached": self.cached,
            "cost_usd": self.cost,
        }
        if self.free:
            d["free"] = True
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UsageRow:
        """From the record's ``usage`` row form (or ``token_usage()``'s: ``cost`` as well)."""
        turns = int(d.get("turns") or 0)
        cost = d.get("cost_usd", d.get("cost"))
        tok_known = d.get("input") is not None or d.get("output") is not None
        return cls(
            str(d.get("provider") or ""), str(d.get("model") or ""), turns=turns, input=d.get("input"),
            output=d.get("output"), cached=d.get("cached"), cost=None if cost is None else float(cost),
            # The record keeps no counts of unknowns: a row without a total is unknown throughout.
            unknown_tokens=0 if tok_known else turns, unknown_cost=turns if cost is None else 0,
            free_turns=turns if d.get("free") is True else 0,
        )  # fmt: skip


def _add(a: int | None, b: int | None) -> int | None:
    if b is None:
        return a
    return b if a is None else a + b


class Ledger:
    """Totals per (provider, model): the process's (``token_usage()``) and each notebook's
    (its record's ``usage``, which survives ``%chat_reset``). Thread-safe."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], UsageRow] = {}
        self._lock = threading.Lock()

    def add_tokens(self, provider: str, model: str | None, tokens: Tokens | None,
                   cost: float | None, free: bool = False) -> None:
        model = model or "unknown"
        with self._lock:
            row = self.rows.get((provider, model))
            if row is None:
                row = self.rows[(provider, model)] = UsageRow(provider, model)
            row.add(tokens, cost, free)

    def add(self, provider: str, turn: Turn) -> None:
        """Add an answer of ``provider``'s."""
        self.add_tokens(provider, turn.model, turn.tokens, turn.cost, turn.free)

    def total(self) -> UsageRow:
        """All rows added up."""
        out = UsageRow("", "")
        with self._lock:
            for row in self.rows.values():
                out.merge(row)
        return out

    def to_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_dict() for r in self.rows.values()]

    def load(self, rows: Iterable[Mapping[str, Any]]) -> None:
        loaded = {}
        for d in rows:
            row = UsageRow.from_dict(d)
            loaded[(row.provider, row.model)] = row
        with self._lock:
            self.rows = loaded

    def clear(self) -> None:
        with self._lock:
            self.rows = {}

    @classmethod
    def sum(cls, *parts: Ledger) -> Ledger:
        """The sum of ledgers, row by row (a new ledger; the parts are left alone)."""
        out = cls()
        for part in parts:
            for key, row in list(part.rows.items()):
                mine = out.rows.get(key)
                if mine is None:
                    mine = out.rows[key] = UsageRow(row.provider, row.model)
                mine.merge(row)
        return out

    def extends(self, other: Ledger) -> bool:
        """True when every row of ``other`` is here with counts at least as large.

        A front end's ledger that extends ours holds the same answers and more (it was kept
        by an earlier kernel of this notebook and not saved yet, or saved after ours was read).
        """
        for key, row in other.rows.items():
            mine = self.rows.get(key)
            if mine is None:
                return False
            for field in ("turns", "input", "output", "cached", "cost"):
                if (getattr(mine, field) or 0) < (getattr(row, field) or 0):
                    return False
        return True


# -- formatting cost -----------------------------------------------------------------------------


def format_cost(usd: float | None) -> str:
    """A cost in US dollars, the one rule of every view (the panel's ``costFormat.ts`` too).

    Unknown is ``n/a`` (never a guessed 0); free is ``$0``; from $1 up, cents with thousands
    separators (``$1,234.50``); below $1, two significant digits and at least two decimals,
    never an exponent (``$0.50``, ``$0.012``, ``$0.00000012``). Halves round up, as
    JavaScript's ``toFixed`` does on the same binary value, so both sides print the same.
    """
    if usd is None or not math.isfinite(usd):
        return "n/a"
    if usd == 0:
        return "$0"
    sign = "-" if usd < 0 else ""
    v = abs(usd)
    if v >= 1:
        return sign + "$" + _thousands(_fixed(v, 2))
    decimals = max(2, 1 - math.floor(math.log10(v)))
    return sign + "$" + _fixed(v, decimals)


#: Enough digits for any finite float to its last decimal (the default 28 raise InvalidOperation
#: from $1e28 up: a budget of 1e30 broke every report).
_EXACT = decimal.Context(prec=1200)


def _fixed(v: float, decimals: int) -> str:
    exact = decimal.Decimal(v)  # the binary value itself, as toFixed rounds it
    step = decimal.Decimal(1).scaleb(-decimals)
    return format(exact.quantize(step, rounding=decimal.ROUND_HALF_UP, context=_EXACT), "f")


def _thousands(fixed: str) -> str:
    whole, _, frac = fixed.partition(".")
    return f"{int(whole):,}" + ("." + frac if frac else "")


def format_limit(usd: float) -> str:
    """A budget the user set, as set: exact, where a cost is rounded to two significant digits
    (a limit of $0.00125 is not "$0.0013"). Cents at least, thousands separated."""
    text = f"{usd:,.2f}"
    if math.isfinite(usd) and float(text.replace(",", "")) != usd:
        # The shortest decimal that reads back as the value, never an exponent (1e-05 or 5e-324).
        whole, _, frac = format(decimal.Decimal(repr(usd)), "f").partition(".")
        text = _thousands(whole) + "." + frac.ljust(2, "0")
    return "$" + text


#: How a known-free cost reads: in a table's cost column, and in prose (an answer's footer).
FREE_IN_TABLE = "$0, local"
FREE_IN_PROSE = "free, local"


def format_row_cost(usd: float | None, *, unknown: int = 0, free: bool = False, prose: bool = False) -> str:
    """A (total) cost as the views show it: ``n/a`` unknown, ``+`` when ``unknown`` answers are
    left out of it, and the bundled model's free answers told apart from an unknown price."""
    if free and not usd:  # known to be free, unlike an unknown price ("n/a")
        return (FREE_IN_PROSE if prose else FREE_IN_TABLE) + ("+" if unknown else "")
    if usd is None:
        return "n/a"
    return format_cost(usd) + ("+" if unknown else "")


def format_tokens(n: int | None, *, unknown: int = 0) -> str:
    """A (total) token count as the views show it: ``n/a`` unknown, thousands separated, ``+``
    when ``unknown`` answers did not report theirs."""
    if n is None:
        return "n/a"
    return f"{n:,}" + ("+" if unknown else "")


price_lock = threading.Lock()


def cost_of(price_provider: str | None, model: str | None, tokens: Tokens | None) -> float | None:
    """USD cost of one request, or None when the provider, model or tokens are unknown."""
    if price_provider == FREE:
        return 0.0
    if not price_provider or not model or tokens is None or tokens.input is None or tokens.output is None:
        return None
    with price_lock:  # genai_prices keeps a lazily built global price table
        from genai_prices import Usage, calc_price

        usage = Usage(
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            cache_read_tokens=tokens.cached or None,
        )
        try:
            price = calc_price(usage, model_ref=model, provider_id=price_provider)
        except LookupError:
            return None
        except Exception as exc:  # noqa: BLE001 - a price table must never lose an answer
            # genai-prices rejects some real usage (more cached tokens than prompt tokens):
            # the cost is unknown then, said once per model at debug level.
            if (price_provider, model) not in _price_failures:
                _price_failures.add((price_provider, model))
                _log.debug("no price for %s/%s: genai-prices raised %s: %s",
                           price_provider, model, type(exc).__name__, exc)
            return None
    return float(price.total_price)


def known_price_provider(name: str) -> str | None:
    """The genai-prices provider id for a provider display name, if it knows one."""
    key = name.strip().lower()
    if not key or key == "openai-compatible":
        return None
    with price_lock:
        from genai_prices.data_snapshot import get_snapshot

        for p in get_snapshot().providers:
            if key in (p.id.lower(), p.name.lower()):
                return p.id
    return None
