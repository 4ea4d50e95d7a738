"""Spend: replay keys, the notebook's budget rule and the one-line footer under an answer.

Core module (no IPython): the magics, and later the panel and ``parallel_chat``, call these.

- ``request_hash`` keys an exchange by everything that decides the request: the prompt as sent
  (after ``{{ }}`` and ``--with``), the history before it, provider, model, system prompt and
  params. The key is stored in the user turn's ``meta`` (``request_hash``), so it travels with
  the notebook's record and a re-run of an unchanged cell can show the recorded answer.
- ``check_budget`` is the whole budget rule: refuse before anything is sent when the spend is
  already at the budget, or when this request's worst case (input estimate + max_tokens at the
  known price) would pass it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._turns import Tokens, Turn
from ._usage import UsageRow, format_cost, format_limit, format_row_cost

__all__ = [
    "Budget",
    "BudgetExceeded",
    "Spent",
    "check_budget",
    "check_request",
    "find_replay",
    "footer",
    "request_hash",
]

HASH_KEY = "request_hash"
#: Output tokens assumed for the worst case when neither the cell nor the session sets max_tokens.
DEFAULT_WORST_OUTPUT = 4096


def _history_item(t: Turn) -> list[str]:
    return [t.role, t.text]


def _tail(prompt: str, provider: str, model: str | None, system_prompt: str | None,
          params: Mapping[str, Any]) -> bytes:
    return json.dumps(
        [prompt, provider, model or "", system_prompt or "", dict(params)],
        sort_keys=True, default=str, ensure_ascii=False,
    ).encode()


def request_hash(
    prompt: str,
    history: Sequence[Turn],
    *,
    provider: str,
    model: str | None,
    system_prompt: str | None,
    params: Mapping[str, Any],
) -> str:
    """The replay key of a request (hex sha256, shortened)."""
    h = hashlib.sha256()
    for t in history:
        h.update(json.dumps(_history_item(t), ensure_ascii=False).encode() + b"\n")
    h.update(b"--\n" + _tail(prompt, provider, model, system_prompt, params))
    return h.hexdigest()[:32]


def find_replay(
    turns: Sequence[Turn],
    prompt: str,
    *,
    provider: str,
    model: str | None,
    system_prompt: str | None,
    params: Mapping[str, Any],
    at: int | None = None,
) -> int | None:
    """Index of a recorded user turn whose request had exactly these inputs, or None.

    ``at``: look only at that index (the exchange a notebook cell recorded before). Only a
    complete answer (not partial) is replayed. Hashing is incremental over the history, so a
    lookup is linear in its length.
    """
    h = hashlib.sha256()
    tail = b"--\n" + _tail(prompt, provider, model, system_prompt, params)
    for i, t in enumerate(turns):
        if at is not None and i > at:
            break
        if t.role == "user" and i + 1 < len(turns) and (at is None or i == at):
            stored = t.meta.get(HASH_KEY)
            reply = turns[i + 1]
            if stored and reply.role == "assistant" and not reply.partial:
                probe = h.copy()
                probe.update(tail)
                if probe.hexdigest()[:32] == stored:
                    return i
        h.update(json.dumps(_history_item(t), ensure_ascii=False).encode() + b"\n")
    return None


# -- budget ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """The notebook's spend limit: USD, tokens (input + output), or both. None = no limit."""

    usd: float | None = None
    tokens: int | None = None

    @property
    def active(self) -> bool:
        return self.usd is not None or self.tokens is not None

    def to_dict(self) -> dict[str, Any]:
        return {"usd": self.usd, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, d: Any) -> Budget:
        """From the record; raises ValueError on anything but non-negative numbers or null."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError("budget must be an object")
        usd, tokens = d.get("usd"), d.get("tokens")
        if usd is not None and (isinstance(usd, bool) or not isinstance(usd, (int, float))
                                or not math.isfinite(usd) or usd < 0):
            raise ValueError("budget.usd must be a non-negative number or null")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0):
            raise ValueError("budget.tokens must be a non-negative integer or null")
        return cls(None if usd is None else float(usd), tokens)


@dataclass(frozen=True)
class Spent:
    """What the notebook has spent: USD where known, tokens (input + output) where reported."""

    usd: float = 0.0
    tokens: int = 0
    unknown_cost: int = 0  # answers whose cost is unknown (not counted in usd)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> Spent:
        """From ledger rows (``token_usage()`` / the record's ``usage`` form)."""
        total = UsageRow("", "")
        for r in rows:
            total.merge(UsageRow.from_dict(r))
        return cls.of(total)

    @classmethod
    def of(cls, total: UsageRow) -> Spent:
        """From a ledger's total (``Ledger.total()``)."""
        return cls(total.cost or 0.0, (total.input or 0) + (total.output or 0), total.unknown_cost)


class BudgetExceeded(Exception):
    """Not an error of the chat: the caller turns it into its own refusal (UsageError, ...)."""


def check_budget(
    budget: Budget,
    spent: Spent,
    *,
    input_tokens: int,
    max_tokens: int | None,
    worst_usd: float | None,
    how_to_raise: str = "%chat_budget USD",
) -> None:
    """Raise ``BudgetExceeded`` if this request may pass the budget; return otherwise.

    ``worst_usd`` is the cost of ``input_tokens`` in and ``max_tokens`` out at the known price,
    or None when the price is unknown (then only a token budget can refuse on the worst case).
    """
    if not budget.active:
        return
    out = max_tokens if max_tokens is not None else DEFAULT_WORST_OUTPUT
    worst_tokens = input_tokens + out
    if budget.usd is not None:
        if spent.usd >= budget.usd:
            raise BudgetExceeded(
                f"budget reached: {format_cost(spent.usd)} spent of {format_limit(budget.usd)}; nothing sent "
                f"(raise it with {how_to_raise}, or turn it off with %chat_budget --off)"
            )
        if worst_usd is not None and spent.usd + worst_usd > budget.usd:
            raise BudgetExceeded(
                f"this request could cost up to {format_cost(worst_usd)} ({input_tokens:,} tokens in, "
                f"up to {out:,} out) and pass the budget of {format_limit(budget.usd)} "
                f"({format_cost(budget.usd - spent.usd)} left); nothing sent (raise it with {how_to_raise}, "
                "or lower --max-tokens)"
            )
    if budget.tokens is not None:
        if spent.tokens >= budget.tokens:
            raise BudgetExceeded(
                f"token budget reached: {spent.tokens:,} of {budget.tokens:,} tokens used; nothing "
                "sent (raise it with %chat_budget --tokens N, or turn it off with %chat_budget --off)"
            )
        if spent.tokens + worst_tokens > budget.tokens:
            raise BudgetExceeded(
                f"this request could use up to {worst_tokens:,} tokens ({input_tokens:,} in, up to "
                f"{out:,} out) and pass the token budget of {budget.tokens:,} "
                f"({budget.tokens - spent.tokens:,} left); nothing sent (raise it with "
                "%chat_budget --tokens N, or lower --max-tokens)"
            )


def check_request(
    budget: Budget,
    spent: Spent,
    *,
    price_provider: str | None,
    model: str | None,
    input_tokens: int,
    max_tokens: int | None,
    how_to_raise: str = "%chat_budget USD",
) -> None:
    """``check_budget`` for one request to a provider: its worst case priced with genai-prices.

    For every sender (a ``%%chat`` cell, ``%chat_fix``, the panel, ``parallel_chat``): call it
    before anything is sent; it raises ``BudgetExceeded`` with the message to show.
    """
    if not budget.active:
        return
    from ._usage import cost_of

    out = max_tokens if max_tokens is not None else DEFAULT_WORST_OUTPUT
    worst = cost_of(price_provider, model, Tokens(input_tokens, out, 0)) if model else None
    check_budget(budget, spent, input_tokens=input_tokens, max_tokens=max_tokens, worst_usd=worst,
                 how_to_raise=how_to_raise)


def budget_lines(budget: Budget, spent: Spent) -> list[str]:
    """How the budget stands, for ``%chat_budget`` and ``%chat_usage``."""
    if not budget.active:
        return ["budget: none (set one with %chat_budget USD or %chat_budget --tokens N)"]
    lines = []
    if budget.usd is not None:
        unknown = f" (+{spent.unknown_cost} answers of unknown cost)" if spent.unknown_cost else ""
        lines.append(
            f"budget: {format_limit(budget.usd)}, spent {format_cost(spent.usd)}{unknown}, "
            f"left {format_cost(max(0.0, budget.usd - spent.usd))}"
        )
    if budget.tokens is not None:
        lines.append(
            f"token budget: {budget.tokens:,}, used {spent.tokens:,}, "
            f"left {max(0, budget.tokens - spent.tokens):,}"
        )
    return lines


# -- footer ------------------------------------------------------------------------------------


def footer(
    model: str | None,
    tokens: Tokens | None,
    cost: float | None,
    *,
    local: bool = False,
    replayed_at: str | None = None,
    requests: int = 1,
) -> str:
    """The quiet line under an answer: model, tokens in/out, cost (of all ``requests`` the answer
    took: a tool exchange makes one per round), and whether it was replayed."""
    tok = tokens or Tokens()
    t_in = "n/a" if tok.input is None else f"{tok.input:,}"
    t_out = "n/a" if tok.output is None else f"{tok.output:,}"
    price = format_row_cost(cost, free=local, prose=True)
    parts = [model or "unknown model", f"{t_in} in / {t_out} out", price]
    if requests > 1:
        parts.append(f"{requests} requests")
    if replayed_at is not None:
        parts.append(f"replayed (recorded {replayed_at}), no request")
    return " · ".join(parts)


def exchange_spend(exchange: Sequence[Turn]) -> tuple[Tokens, float | None, int]:
    """Tokens and cost of an exchange's answers (one per request), summed by the views' one rule,
    and their number. A count one answer did not report makes the total unknown, never smaller."""
    row = UsageRow("", "").add_turns(exchange)
    known = not row.unknown_tokens
    tokens = Tokens(row.input if known else None, row.output if known else None, row.cached if known else None)
    return tokens, row.complete_cost, row.turns
