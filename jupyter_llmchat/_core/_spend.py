"""Spend: replay keys, the spend guard and its budget rule, and the one-line footer under an answer.

Core module (no IPython): ``Chat`` passes the guard before each request; the notebook layer
(``_bridge``) installs the budget on it; the magics use the replay keys and the footer.

- ``request_hash`` is the replay key's version 1: one hash of everything that decides the
  request (the prompt as sent, after ``{{ }}`` and ``--with``, the history before it, provider,
  model, system prompt and params), stored in the user turn's ``meta`` (``request_hash``) so it
  travels with the notebook's record. ``_replay`` compares keys (its version 2 keeps the parts
  apart) and still replays an exchange that holds only this one.
- ``check_budget`` is the whole budget rule: refuse before anything is sent when the spend is
  already at the budget, or when this request's worst case (input estimate + max_tokens at the
  known price) would pass it.
- ``spend_guard`` is the process's one spend guard: every request of every ``Chat`` (each round
  of a tool exchange too) passes ``spend_guard.reserve`` before it is sent, with its model
  resolved and its worst case estimated by ``request_estimate`` (the number ``--dry-run`` shows).
  The notebook layer installs its budget on it (a ``SpendRule``); without one nothing is
  refused. The guard holds the worst case of the requests in flight, so two at once cannot pass
  the budget together, and settles each when its answer's usage arrives (its ``on_spend``
  listeners hear it, the process ledger among them, and the rule), or releases it when nothing
  arrived.
- Replay-only mode (``JUPYTER_LLMCHAT_REPLAY=only`` in the environment, or the notebook's
  ``ChatMagics.replay = "only"`` set on the guard): the guard refuses every request with
  ``ReplayOnlyError`` before anything is sent, so a CI run or docs build of a saved notebook
  costs nothing whatever path asks (a cell, the panel, ``parallel_chat``, a ``Chat``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from .._errors import BudgetExceeded, ReplayOnlyError
from ._turns import Tokens, Turn
from ._usage import UsageRow, cost_of, format_cost, format_limit, format_row_cost, format_tokens

__all__ = [
    "Budget",
    "BudgetExceeded",
    "REPLAY_ENV",
    "ReplayOnlyError",
    "RequestPreview",
    "SpendGuard",
    "SpendRequest",
    "SpendRule",
    "Spent",
    "check_budget",
    "check_request",
    "estimate_tokens",
    "footer",
    "history_hash",
    "request_estimate",
    "request_hash",
    "spend_guard",
    "spend_request",
    "unreadable_budget",
]

HASH_KEY = "request_hash"
#: The environment's replay mode: "only" never sends (CI, docs builds); it overrides the notebook.
REPLAY_ENV = "JUPYTER_LLMCHAT_REPLAY"
#: Output tokens assumed for the worst case when neither the cell nor the session sets max_tokens.
DEFAULT_WORST_OUTPUT = 4096
#: The largest budget ``%chat_budget`` and the record take: past it a typo, not a limit.
MAX_BUDGET_USD = 1_000_000.0
MAX_BUDGET_TOKENS = 10**12
#: Tokens counted for an image part of a request: its real count depends on its size and the
#: model (OpenAI's run from 85 to about 1,100), and the worst case must not be far below it.
IMAGE_TOKENS = 1000


def _history_item(t: Turn) -> list[str]:
    return [t.role, t.text]


def _tail(prompt: str, provider: str, model: str | None, system_prompt: str | None,
          params: Mapping[str, Any]) -> bytes:
    return json.dumps(
        [prompt, provider, model or "", system_prompt or "", dict(params)],
        sort_keys=True, default=str, ensure_ascii=False,
    ).encode()


def history_hash(history: Sequence[Turn], into: Any = None) -> Any:
    """The running sha256 of a history as the replay keys read it (each turn's role and text),
    to continue with ``.copy()``: both key versions hash a history once. ``into``: a running
    hash to continue with ``history`` (updated in place), as a reader of many keys does."""
    h = hashlib.sha256() if into is None else into
    for t in history:
        h.update(json.dumps(_history_item(t), ensure_ascii=False).encode() + b"\n")
    return h


def request_hash(
    prompt: str,
    history: Sequence[Turn],
    *,
    provider: str,
    model: str | None,
    system_prompt: str | None,
    params: Mapping[str, Any],
    hashed: Any = None,
) -> str:
    """The replay key of a request, version 1 (hex sha256, shortened); ``hashed``: the
    ``history_hash(history)`` already taken."""
    h = (hashed if hashed is not None else history_hash(history)).copy()
    h.update(b"--\n" + _tail(prompt, provider, model, system_prompt, params))
    return str(h.hexdigest()[:32])


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
                                or not math.isfinite(usd) or not 0 <= usd <= MAX_BUDGET_USD):
            raise ValueError(f"budget.usd must be a number from 0 to {MAX_BUDGET_USD:,.0f}, or null")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                                   or not 0 <= tokens <= MAX_BUDGET_TOKENS):
            raise ValueError(f"budget.tokens must be an integer from 0 to {MAX_BUDGET_TOKENS:,}, or null")
        return cls(None if usd is None else float(usd), tokens)


@dataclass(frozen=True)
class Spent:
    """What the notebook has spent: USD where known, tokens (input + output) where reported."""

    usd: float = 0.0
    tokens: int = 0
    unknown_cost: int = 0  # answers whose cost is unknown (not counted in usd)

    def __add__(self, other: Spent) -> Spent:
        return Spent(self.usd + other.usd, self.tokens + other.tokens, self.unknown_cost + other.unknown_cost)

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


#: How to ask for less output, in the terms of the surface that asked: a cell has an option for
#: it; the panel, ``parallel_chat`` and a Python ``Chat`` take the session's or the Chat's params.
LOWER_IN_CELL = "or lower --max-tokens"
LOWER_IN_SESSION = (
    "or lower max_tokens: %config ChatMagics.params = {'max_tokens': N} for the notebook's "
    "sessions, params(max_tokens=N) for a Chat"
)


def check_budget(
    budget: Budget,
    spent: Spent,
    *,
    input_tokens: int,
    max_tokens: int | None,
    worst_usd: float | None,
    how_to_raise: str = "%chat_budget USD",
    lower: str = LOWER_IN_CELL,
    held: Spent = Spent(),
) -> None:
    """Raise ``BudgetExceeded`` if this request may pass the budget; return otherwise.

    ``worst_usd`` is the cost of ``input_tokens`` in and ``max_tokens`` out at the known price,
    or None when the price is unknown (then only a token budget can refuse on the worst case).
    ``held`` is the worst case of the requests in flight, counted as spent until they settle.
    """
    if not budget.active:
        return
    out = max_tokens if max_tokens is not None else DEFAULT_WORST_OUTPUT
    worst_tokens = input_tokens + out
    total = spent + held
    n_in, n_out = format_tokens(input_tokens), format_tokens(out)
    if budget.usd is not None:
        in_flight = f" (+{format_cost(held.usd)} held by requests in flight)" if held.usd else ""
        limit = format_limit(budget.usd)
        if total.usd >= budget.usd:
            raise BudgetExceeded(
                f"budget reached: {format_cost(spent.usd)} spent{in_flight} of {limit}; "
                f"nothing sent (raise it with {how_to_raise}, or turn it off with %chat_budget --off)"
            )
        if worst_usd is not None and total.usd + worst_usd > budget.usd:
            raise BudgetExceeded(
                f"this request could cost up to {format_cost(worst_usd)} ({n_in} tokens in, "
                f"up to {n_out} out) and pass the budget of {limit} "
                f"({format_cost(budget.usd - total.usd)} left{in_flight}); nothing sent "
                f"(raise it with {how_to_raise}, {lower})"
            )
    if budget.tokens is not None:
        held_s = f" (+{format_tokens(held.tokens)} held by requests in flight)" if held.tokens else ""
        limit = format_tokens(budget.tokens)
        if total.tokens >= budget.tokens:
            raise BudgetExceeded(
                f"token budget reached: {format_tokens(spent.tokens)}{held_s} of {limit} tokens "
                "used; nothing sent (raise it with %chat_budget --tokens N, or turn it off with "
                "%chat_budget --off)"
            )
        if total.tokens + worst_tokens > budget.tokens:
            raise BudgetExceeded(
                f"this request could use up to {format_tokens(worst_tokens)} tokens ({n_in} in, "
                f"up to {n_out} out) and pass the token budget of {limit} "
                f"({format_tokens(budget.tokens - total.tokens)} left{held_s}); nothing sent "
                f"(raise it with %chat_budget --tokens N, {lower})"
            )


def check_request(
    budget: Budget,
    spent: Spent,
    request: SpendRequest,
    *,
    held: Spent = Spent(),
    how_to_raise: str = "%chat_budget USD",
) -> Spent:
    """``check_budget`` for one request: its worst case priced with genai-prices (only when a
    USD budget needs it). Returns that worst case, for the guard to hold while it is in flight."""
    if not budget.active:
        return Spent()
    worst = request.worst_usd() if budget.usd is not None else None
    check_budget(budget, spent, input_tokens=request.input_tokens, max_tokens=request.max_tokens,
                 worst_usd=worst, how_to_raise=how_to_raise, held=held,
                 lower=LOWER_IN_CELL if request.source == "cell" else LOWER_IN_SESSION)
    return Spent(worst or 0.0, request.worst_tokens)


# -- the spend guard: every request of the process passes it -----------------------------------


#: The one token estimate's ratio (no tokenizer needed): about four characters per token.
CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int, messages: int = 0) -> int:
    """The one token estimate: characters / 4, and a few tokens per message for the chat
    template's role markers (``messages`` counts the system prompt's place, set or not).
    A request's (``request_estimate``) and an attached value's (``--with``) alike."""
    return -(-chars // CHARS_PER_TOKEN) + 4 * messages


def message_text(turns: Sequence[Turn]) -> int:
    return sum(len(t.text) for t in turns)


def request_estimate(body: Mapping[str, Any]) -> int:
    """Input tokens of a request body, estimated before it is sent: the number the spend guard
    checks and ``--dry-run`` shows (``Chat.request_preview``). Every text of its messages (tool
    calls' arguments and tool results too), ``IMAGE_TOKENS`` per image, and each message's place."""
    messages = body.get("messages") or []
    chars, count, images = 0, 1, 0  # 1: the system prompt's place, counted whether set or not
    for m in messages:
        if m.get("role") != "system":
            count += 1
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "image_url":
                    images += 1
                elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {} if isinstance(call, Mapping) else {}
            chars += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return estimate_tokens(chars, count) + IMAGE_TOKENS * images


def spend_request(body: Mapping[str, Any], provider: Any, source: str | None) -> SpendRequest:
    """What the guard sees of a request ``body`` to ``provider`` (an ``OpenAICompatible``)."""
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    model = body.get("model")
    return SpendRequest(
        provider.name, model if isinstance(model, str) and model else None, request_estimate(body),
        max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
        source, price_provider=lambda: provider.price_provider,
    )


@dataclass(frozen=True)
class SpendRequest:
    """What the guard sees of one request before it is sent: its worst case."""

    provider: str
    model: str | None
    input_tokens: int
    max_tokens: int | None
    #: Who asked: "cell", "panel", or None (Python: ``session().chat()``, ``parallel_chat``, ...).
    source: str | None = None
    #: The genai-prices provider id, asked only when a USD budget needs a price (it loads the table).
    price_provider: Callable[[], str | None] = field(default=lambda: None, compare=False)

    @property
    def worst_tokens(self) -> int:
        return self.input_tokens + (self.max_tokens if self.max_tokens is not None else DEFAULT_WORST_OUTPUT)

    def worst_usd(self) -> float | None:
        out = self.max_tokens if self.max_tokens is not None else DEFAULT_WORST_OUTPUT
        if not self.model:
            return None
        return cost_of(self.price_provider(), self.model, Tokens(self.input_tokens, out, 0))


@dataclass(frozen=True)
class RequestPreview:
    """A request built and not sent (``Chat.request_preview``): its body, and what the spend
    guard would check of it, so ``--dry-run`` shows the guard's own numbers."""

    body: dict[str, Any]
    spend: SpendRequest


class SpendRule(Protocol):
    """What the notebook layer installs on the guard (its budget and its ledger)."""

    def check_spend(self, request: SpendRequest, held: Spent) -> Spent:
        """Raise ``BudgetExceeded``, or return the request's worst case to hold while in flight."""

    def add_spend(self, provider: str, turn: Turn) -> None:
        """An answer's usage arrived (its tokens and cost, None where unknown)."""


class Reservation:
    """One request's pass: held by the guard until ``settle`` (its answer) or ``release``."""

    def __init__(self, guard: SpendGuard, request: SpendRequest, held: Spent) -> None:
        self.guard, self.request, self.held = guard, request, held
        self.done = False

    def settle(self, turn: Turn) -> None:
        """The answer arrived: its usage goes into the ledgers, the hold is let go."""
        self.guard._end(self, turn)

    def release(self) -> None:
        """Nothing arrived (the request failed before its answer): the hold is let go."""
        self.guard._end(self, None)


class SpendGuard:
    """The process's one spend guard (``spend_guard``); thread-safe.

    A check and a settlement happen under one lock, so two requests checked at once (a cell,
    the panel and ``parallel_chat`` together) each see the other's worst case held."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rule: SpendRule | None = None
        self._held: list[Reservation] = []
        self._listeners: list[Callable[[str, Turn], None]] = []
        self._replay_only: str | None = None

    def set_replay_only(self, setting: str | None) -> None:
        """Refuse every request from now on (``setting`` names who asked for it, for the
        message, e.g. ``ChatMagics.replay = 'only'``), or no longer (None)."""
        self._replay_only = setting

    def replay_only(self) -> str | None:
        """Why nothing may be sent now (the setting that says so), or None.

        The environment wins over the notebook's setting, as CI sets it from outside. A value
        other than "only" is refused too, not ignored: a typo must not spend in a CI run."""
        env = os.environ.get(REPLAY_ENV, "").strip()
        if env.lower() == "only":
            return f"{REPLAY_ENV}=only"
        if env:
            return f"{REPLAY_ENV}={env[:40]!r}, which is not a mode (set it to 'only', or unset it)"
        return self._replay_only

    def check_sending(self) -> None:
        """Raise ``ReplayOnlyError`` in replay-only mode; before anything is sent (a request,
        and what comes before one: asking the server its model, starting the local model)."""
        why = self.replay_only()
        if why is not None:
            raise ReplayOnlyError(f"replay-only mode ({why}): nothing is sent")

    def install(self, rule: SpendRule | None) -> None:
        """Make ``rule`` the budget every request passes (None: no budget)."""
        with self._lock:
            self._rule = rule

    @property
    def rule(self) -> SpendRule | None:
        return self._rule

    def on_spend(self, listener: Callable[[str, Turn], None]) -> Callable[[], None]:
        """Call ``listener(provider, turn)`` with every answer's usage as it arrives (each tool
        round's too: one per request sent); returns a remover. How a ledger is fed."""
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def held(self) -> Spent:
        """The worst case of the requests in flight."""
        with self._lock:
            return self._held_total()

    def _held_total(self) -> Spent:
        total = Spent()
        for r in self._held:
            total = total + r.held
        return total

    def reserve(self, request: SpendRequest) -> Reservation:
        """Pass ``request`` (raises ``BudgetExceeded``) and hold its worst case until it settles."""
        self.check_sending()
        with self._lock:
            rule = self._rule
            held = rule.check_spend(request, self._held_total()) if rule is not None else Spent()
            reservation = Reservation(self, request, held)
            self._held.append(reservation)
        return reservation

    def _end(self, reservation: Reservation, turn: Turn | None) -> None:
        with self._lock:
            if reservation.done:
                return
            reservation.done = True
            self._held.remove(reservation)
            if turn is None:
                return
            provider = reservation.request.provider
            for listener in list(self._listeners):
                try:
                    listener(provider, turn)
                except Exception as exc:  # a broken ledger must not lose the answer
                    print(f"jupyter_llmchat: spend listener failed: {exc!r}", file=sys.stderr)
            if self._rule is not None:
                self._rule.add_spend(provider, turn)


#: The hook every request of every Chat of this process passes (DESIGN §1, "Spend guard").
spend_guard = SpendGuard()


def unreadable_budget(reason: str) -> str:
    """The line for a budget the record holds and the kernel cannot read (DESIGN §6): it is
    never lifted silently, so nothing is sent until ``%chat_budget`` sets one again."""
    return (f"the notebook's budget could not be read ({reason[:200]}); nothing is sent until "
            "%chat_budget sets it again (%chat_budget USD, --tokens N, or --off)")


def budget_lines(budget: Budget, spent: Spent, unreadable: str | None = None) -> list[str]:
    """How the budget stands, for ``%chat_budget`` and ``%chat_usage``."""
    if unreadable is not None:
        return [unreadable_budget(unreadable)]
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
            f"token budget: {format_tokens(budget.tokens)}, used {format_tokens(spent.tokens)}, "
            f"left {format_tokens(max(0, budget.tokens - spent.tokens))}"
        )
    return lines


# -- footer ------------------------------------------------------------------------------------


def footer(
    model: str | None,
    tokens: Tokens | None,
    cost: float | None,
    *,
    free: bool = False,
    replayed_at: str | None = None,
    requests: int = 1,
) -> str:
    """The quiet line under an answer: model, tokens in/out, cost (of all ``requests`` the answer
    took: a tool exchange makes one per round), and whether it was replayed."""
    tok = tokens or Tokens()
    price = format_row_cost(cost, free=free, prose=True)
    parts = [model or "unknown model",
             f"{format_tokens(tok.input)} in / {format_tokens(tok.output)} out", price]
    if requests > 1:
        parts.append(f"{requests} requests")
    if replayed_at is not None:
        parts.append(f"replayed (recorded {replayed_at}), no request")
    return " · ".join(parts)


class ExchangeSpend(NamedTuple):
    tokens: Tokens
    cost: float | None
    requests: int
    #: Every answer of the exchange is known to have cost nothing (``Turn.free``).
    free: bool


def exchange_spend(exchange: Sequence[Turn]) -> ExchangeSpend:
    """Tokens and cost of an exchange's answers (one per request), summed by the views' one rule,
    and their number. A count one answer did not report makes the total unknown, never smaller."""
    row = UsageRow("", "").add_turns(exchange)
    known = not row.unknown_tokens
    tokens = Tokens(row.input if known else None, row.output if known else None, row.cached if known else None)
    return ExchangeSpend(tokens, row.complete_cost, row.turns, row.free)


def exchange_footer(exchange: Sequence[Turn], *, model: str | None = None,
                    replayed_at: str | None = None) -> str:
    """The footer of one exchange, as a cell and an export show it (``model``: when its last
    answer names none)."""
    spend = exchange_spend(exchange)
    last = exchange[-1]
    return footer(last.model or model, spend.tokens, spend.cost, free=spend.free,
                  replayed_at=replayed_at, requests=spend.requests)
