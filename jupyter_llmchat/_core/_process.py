"""What every ``Chat`` of this process shares: the core's one piece of process-wide state.

The session registry (``_sessions``) sits above the core and reads this; the core never imports
the registry. Kept on one object so a reader finds it in one place. The ledger is fed as the
notebook's is: it listens to the spend guard every request passes, and hears each answer's
usage as it arrives; nothing else writes into it."""

from __future__ import annotations

import ssl
import threading
from typing import Any

from ._spend import spend_guard
from ._usage import Ledger, price_lock

__all__ = ["Process", "process", "process_ledger", "token_usage", "warm_up_prices"]


class Process:
    """The process's usage ledger and the wire layer's caches."""

    def __init__(self) -> None:
        #: Every answer of every Chat of this process (``token_usage()``, the budget without a
        #: notebook).
        self.ledger = Ledger()
        # One verifying SSL context per CA choice (loading the CA bundle is slow), the hosts
        # already warned about a key over plain http, and whether the price table is loading.
        self.ssl_contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}
        self.plain_http_warned: set[str] = set()
        self.prices_loading = False


process = Process()
# Every answer of every Chat passes the guard; the process ledger is one of its listeners.
spend_guard.on_spend(process.ledger.add)


def process_ledger() -> Ledger:
    """This process's ledger: every answer of every Chat."""
    return process.ledger


def token_usage() -> list[dict[str, Any]]:
    """Totals of this process's turns per (provider name, model), with cost in USD.

    Each row: ``provider``, ``model``, ``turns``, ``input``, ``output``, ``cached`` and the cost in
    USD as ``cost`` (also ``cost_usd``); None where unknown.
    """
    # "cost" as in chatlas's token_usage(); "cost_usd" as in the notebook's record.
    return [{**row, "cost": row["cost_usd"]} for row in process_ledger().to_list()]


def warm_up_prices() -> None:
    """Import the price table in the background while a request is under way (once)."""
    with price_lock:
        if process.prices_loading:
            return
        process.prices_loading = True

    def load() -> None:
        with price_lock:  # lazy: the price table takes ~0.3 s to import
            import genai_prices.data_snapshot  # noqa: F401

    threading.Thread(target=load, name="jupyter_llmchat prices", daemon=True).start()
