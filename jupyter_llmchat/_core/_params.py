"""Model parameters, named as in ellmer's ``params()`` and mapped to chat-completions wire names."""

from __future__ import annotations

import difflib
from typing import Any

from .._errors import ConfigurationError

__all__ = ["KNOWN_PARAMS", "params", "wire_params"]

#: ellmer's names -> the chat-completions request field they become.
KNOWN_PARAMS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "seed": "seed",
    "max_tokens": "max_tokens",
    "log_probs": "logprobs",
    "stop_sequences": "stop",
    "reasoning_effort": "reasoning_effort",
}

_NUMBER = (int, float)


def _check(name: str, value: Any) -> None:
    ok: bool
    if name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        ok = isinstance(value, _NUMBER) and not isinstance(value, bool)
        if ok and name == "temperature":
            ok = 0 <= value <= 2
        if ok and name == "top_p":
            ok = 0 <= value <= 1
    elif name in ("top_k", "seed", "max_tokens"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and name in ("top_k", "max_tokens"):
            ok = value > 0
    elif name == "log_probs":
        ok = isinstance(value, bool)
    elif name == "stop_sequences":
        ok = isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value)
    elif name == "reasoning_effort":
        ok = isinstance(value, str)
    else:  # pragma: no cover - every known name is handled above
        ok = True
    if not ok:
        raise ConfigurationError(
            f"params: {name}={value!r} is not valid",
            hint=_HINTS.get(name, "see help(jupyter_llmchat.params)"),
        )


_HINTS = {
    "temperature": "a number from 0 to 2",
    "top_p": "a number from 0 to 1",
    "frequency_penalty": "a number",
    "presence_penalty": "a number",
    "top_k": "a positive integer",
    "seed": "an integer",
    "max_tokens": "a positive integer",
    "log_probs": "True or False",
    "stop_sequences": "a list of strings",
    "reasoning_effort": 'a string such as "low", "medium" or "high"',
}


def params(
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    seed: int | None = None,
    max_tokens: int | None = None,
    log_probs: bool | None = None,
    stop_sequences: list[str] | None = None,
    reasoning_effort: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Model parameters shared by every provider, as in ellmer's ``params()``.

    Unset (None) values are left out. ``**extra`` goes into the request body as given, except
    that a name close to a known one (``temprature``) is refused as a likely typo.
    """
    known = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "frequency_penalty": frequency_penalty,
        "presence_penalty": presence_penalty,
        "seed": seed,
        "max_tokens": max_tokens,
        "log_probs": log_probs,
        "stop_sequences": stop_sequences,
        "reasoning_effort": reasoning_effort,
    }
    out = {k: v for k, v in known.items() if v is not None}
    for name, value in out.items():
        _check(name, value)
    stops = out.get("stop_sequences")
    if isinstance(stops, tuple):
        out["stop_sequences"] = list(stops)
    candidates = list(KNOWN_PARAMS) + list(KNOWN_PARAMS.values())
    for name in extra:
        if name in candidates:
            continue
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
        if close:
            raise ConfigurationError(
                f"params: unknown parameter {name!r}", hint=f"did you mean {close[0]!r}?"
            )
    out.update(extra)
    return out


def wire_params(p: dict[str, Any]) -> dict[str, Any]:
    """Translate ellmer names to the request body's field names; others pass through."""
    return {KNOWN_PARAMS.get(k, k): v for k, v in p.items() if v is not None}
