"""Token accounting and prices.

Prices come from ``genai-prices``, matched on provider and model; anything it does not know
costs None ("n/a"), never a guessed 0. ``genai_prices`` (and pydantic under it) is imported on
the first priced turn, not at import time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ._turns import Tokens

__all__ = ["UsageRow", "cost_of", "record_usage", "token_usage"]

_lock = threading.Lock()
#: The process-wide usage registry: (provider name, model) -> running totals.
_USAGE: dict[tuple[str, str], UsageRow] = {}


@dataclass
class UsageRow:
    """Totals for one (provider, model). A total is None while no turn reported it."""

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

    def add(self, tokens: Tokens | None, cost: float | None) -> None:
        self.turns += 1
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

    def merge(self, other: UsageRow) -> None:
        self.turns += other.turns
        self.input = _add(self.input, other.input)
        self.output = _add(self.output, other.output)
        self.cached = _add(self.cached, other.cached)
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost
        self.unknown_tokens += other.unknown_tokens
        self.unknown_cost += other.unknown_cost

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "turns": self.turns,
            "input": self.input,
            "output": self.output,
            "cached": self.cached,
            "cost_usd": self.cost,
        }


def _add(a: int | None, b: int | None) -> int | None:
    if b is None:
        return a
    return b if a is None else a + b


def record_usage(provider: str, model: str, tokens: Tokens | None, cost: float | None) -> None:
    with _lock:
        row = _USAGE.get((provider, model))
        if row is None:
            row = _USAGE[(provider, model)] = UsageRow(provider, model)
        row.add(tokens, cost)


def token_usage() -> list[dict[str, Any]]:
    """Totals of this process's turns per (provider name, model), with cost in USD.

    Each row: ``provider``, ``model``, ``turns``, ``input``, ``output``, ``cached`` and the cost in
    USD as ``cost`` (also ``cost_usd``); None where unknown.
    """
    with _lock:
        # "cost" as in chatlas's token_usage(); "cost_usd" as in the notebook's record.
        return [{**row.to_dict(), "cost": row.cost} for row in _USAGE.values()]


_price_lock = threading.Lock()


#: The price provider of models known to cost nothing (the bundled local model): cost 0.0.
FREE = "free"


def cost_of(price_provider: str | None, model: str | None, tokens: Tokens | None) -> float | None:
    """USD cost of one request, or None when the provider, model or tokens are unknown."""
    if price_provider == FREE:
        return 0.0
    if not price_provider or not model or tokens is None or tokens.input is None or tokens.output is None:
        return None
    with _price_lock:  # genai_prices keeps a lazily built global price table
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
    return float(price.total_price)


_warm = threading.Event()


def warm_up_prices() -> None:
    """Import the price table in the background while a request is under way (once)."""
    if _warm.is_set():
        return
    _warm.set()

    def load() -> None:
        with _price_lock:
            import genai_prices.data_snapshot  # noqa: F401

    threading.Thread(target=load, name="jupyter_llmchat prices", daemon=True).start()


def known_price_provider(name: str) -> str | None:
    """The genai-prices provider id for a provider display name, if it knows one."""
    key = name.strip().lower()
    if not key or key == "openai-compatible":
        return None
    with _price_lock:
        from genai_prices.data_snapshot import get_snapshot

        for p in get_snapshot().providers:
            if key in (p.id.lower(), p.name.lower()):
                return p.id
    return None
