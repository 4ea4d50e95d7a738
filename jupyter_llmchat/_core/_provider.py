"""The wire: one OpenAI-compatible chat-completions endpoint.

Builds request bodies and headers, sends them with bounded retries, decodes the SSE stream and
maps every lower-level failure to the ``LLMChatError`` tree in one place (``_map_*``).
Nothing here knows about turns or history: ``_chat.py`` does.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import ssl
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urlsplit, urlunsplit

from .._errors import (
    APIStatusError,
    AuthenticationError,
    ConfigurationError,
    LLMChatError,
    RateLimitError,
    ServerError,
    StreamError,
    TransportError,
)
from ._params import wire_params
from ._process import process
from ._usage import FREE, known_price_provider

if TYPE_CHECKING:  # asyncio is imported lazily: the sync path never needs it
    import asyncio

    import httpx
else:

    class _LazyHttpx:
        """httpx, imported on first use: it costs ~200 ms (its CLI pulls in rich), and a kernel
        that only loads the extension never needs it."""

        def __getattr__(self, name: str) -> Any:
            import httpx

            globals()["httpx"] = httpx
            return getattr(httpx, name)

    httpx = _LazyHttpx()

__all__ = ["Credentials", "OpenAICompatible", "credentials_from", "deep_merge", "safe_url"]

#: What ``credentials`` may return: a bearer token, a mapping of headers, or nothing.
CredentialValue = Union[str, Mapping[str, str], None]
Credentials = Callable[[], CredentialValue]

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Longest single wait we honour from Retry-After before giving up instead.
MAX_RETRY_WAIT = 60.0
#: The default timeouts, in seconds.
_TIMEOUT = {"connect": 10.0, "read": 300.0, "write": 30.0, "pool": 30.0}
#: Hosts already warned about a key sent over plain http (the warning is once per host).


def safe_url(url: str) -> str:
    """``url`` without userinfo, query or fragment, so it can be shown and stored."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def endpoint(base_url: str, suffix: str) -> str:
    """``{base_url}/{suffix}`` with ``base_url``'s query kept after the path.

    Azure-style URLs carry ``?api-version=...``; appending the suffix to the whole string would
    put it inside the query (``/v1?api-version=x/chat/completions``)."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/") + "/" + suffix
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (localhost, 127.0.0.0/8, ::1)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``extra``; a None value in ``extra`` deletes the key."""
    out = dict(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = deep_merge({}, value)
        else:
            out[key] = value
    return out


# A token's own characters only (RFC 6750's b64token): the quote, brace or comma after it is the
# rest of the message (a JSON body stays JSON).
_SECRETISH = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/\-]+=*|\b(sk|gsk|xai|pk)-[A-Za-z0-9_\-]{8,}", re.IGNORECASE)


class OpenAICompatible:
    """Connection settings and HTTP clients for one chat-completions server."""

    def __init__(
        self,
        *,
        base_url: str,
        name: str,
        model: str | None,
        params: Mapping[str, Any] | None,
        api_args: Mapping[str, Any] | None,
        api_headers: Mapping[str, str | None] | None,
        credentials: Credentials | None,
        price_provider: str | None = None,
        price_lookup: bool = False,
        max_tries: int = 3,
        drop_params: frozenset[str] = frozenset(),
        timeout: float | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.strip():
            raise ConfigurationError("base_url is required", hint='e.g. "http://127.0.0.1:11434/v1"')
        try:
            parts = urlsplit(base_url.strip())
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigurationError(
                f"base_url {safe_url(base_url)!r} is not a valid URL",
                hint='e.g. "http://127.0.0.1:11434/v1"',
            ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"base_url {safe_url(base_url)!r} is not an http(s) URL",
                hint='e.g. "http://127.0.0.1:11434/v1"',
            )
        if "@" in parts.netloc:
            # httpx would silently send Basic auth instead of the Bearer key, and the URL is shown
            # and stored (safe_url strips it, so the user would not even see why auth fails).
            raise ConfigurationError(
                f"base_url must not contain a user name or password (user:pass@) "
                f"({safe_url(base_url)})",
                hint="secrets go in credentials= (a key, or a function returning headers)",
            )
        if max_tries < 1:
            raise ConfigurationError("max_tries must be at least 1")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ConfigurationError("timeout must be a positive number of seconds, or None")
        self.base_url = base_url.strip().rstrip("/")
        self.name = name
        self.model = model
        self.params = dict(params or {})
        self.api_args = dict(api_args or {})
        self.api_headers = dict(api_headers or {})
        self.credentials = credentials
        self._price_provider = price_provider
        # Look the provider's name up in genai-prices on first use (it costs an import).
        self._price_lookup = price_lookup and price_provider is None
        self.max_tries = max_tries
        self.drop_params = drop_params
        #: Seconds to wait for the server (to connect, and between two pieces of the answer);
        #: None: 10 s to connect, 300 s between pieces.
        self.timeout = None if timeout is None else float(timeout)
        self._client: httpx.Client | None = None
        # One AsyncClient per event loop: its pooled connections belong to the loop that opened
        # them, so a client reused by the next ``asyncio.run`` fails ("Event loop is closed").
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        # Values sent as secrets in the latest request, scrubbed from any error message.
        self._secrets: set[str] = set()

    @property
    def price_provider(self) -> str | None:
        """genai-prices' provider id for this provider, or None (cost then stays unknown)."""
        if self._price_lookup:
            self._price_provider = known_price_provider(self.name)
            self._price_lookup = False
        return self._price_provider

    @property
    def free(self) -> bool:
        """Known to cost nothing (the bundled model): its cost shows as free, not as $0 or n/a."""
        return self._price_provider == FREE

    @property
    def priced(self) -> bool:
        """Whether answers may have a price (so the price table is worth loading)."""
        return self._price_lookup or self._price_provider is not None

    # -- request building ---------------------------------------------------------------------

    @property
    def display_url(self) -> str:
        return safe_url(self.base_url)

    def describe(self) -> dict[str, str | None]:
        """The provider as the notebook's record and ``Chat.to_json`` keep it (DESIGN §6): its
        name, its URL without userinfo or query, its model; never a key, header or param."""
        return {"name": self.name, "base_url": self.display_url, "model": self.model}

    def url(self, suffix: str) -> str:
        """The URL of endpoint ``suffix`` ("chat/completions", "models"), query kept."""
        return endpoint(self.base_url, suffix)

    def headers(self) -> dict[str, str]:
        """Headers for one request; ``credentials`` is called every time (rotating tokens)."""
        headers = {"Content-Type": "application/json"}
        secrets: set[str] = set()
        try:
            cred = self.credentials() if self.credentials is not None else None
        except Exception as exc:  # a token refresh that failed: one clear error, not a crash
            raise ConfigurationError(
                f"credentials() raised {type(exc).__name__}: {self.redact(str(exc))[:200]}",
                hint="the function given as credentials= must return a key, headers or None",
            ) from None
        if isinstance(cred, str):
            if cred:
                headers["Authorization"] = f"Bearer {cred}"
                secrets.add(cred)
        elif isinstance(cred, Mapping):
            for k, v in cred.items():
                _set_header(headers, str(k), str(v))
                secrets.add(str(v))
        elif cred is not None:
            raise ConfigurationError(
                "credentials() must return a str, a mapping of headers, or None",
                hint=f"it returned a {type(cred).__name__}",
            )
        for name, value in self.api_headers.items():
            if value is None:  # as in api_args: None removes the header (a default, or the key's)
                _set_header(headers, name, "")
                del headers[name]
            else:
                _set_header(headers, name, value)
        keyed = bool(secrets) or any(
            _AUTH_HEADER.search(k) for k, v in self.api_headers.items() if v is not None
        )
        secrets.update(v for v in self.api_headers.values() if v is not None and len(v) >= 8)
        self._secrets = {s for s in secrets if s}
        if keyed:
            self._warn_plain_http()
        return headers

    def _warn_plain_http(self) -> None:
        """Warn once per host when a key goes over plain http to another machine."""
        parts = urlsplit(self.base_url)
        host = (parts.hostname or "").lower()
        warned = process.plain_http_warned
        if parts.scheme != "http" or is_loopback(host) or host in warned:
            return
        warned.add(host)
        warnings.warn(
            f"jupyter_llmchat: an API key is sent over plain http to {host}: anyone on the "
            "network path can read it. Use an https:// base_url (or a server on this machine).",
            UserWarning,
            stacklevel=2,
        )

    def body(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        stream: bool,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        merged = dict(self.params)
        merged.update(params or {})
        for k in self.drop_params:
            merged.pop(k, None)
        body.update(wire_params(merged))
        return deep_merge(body, self.api_args)

    def fit_context(self, body: dict[str, Any]) -> str | None:
        """Shorten ``body["messages"]`` to fit the model's context; return a note if it did.

        Only a provider that knows its model's context (the bundled one) does anything."""
        return None

    async def afit_context(self, body: dict[str, Any]) -> str | None:
        """``fit_context`` for async callers: what it asks the server is awaited, never blocks
        the event loop (the panel's, ``parallel_chat``'s)."""
        return None

    def redact(self, text: str) -> str:
        """``text`` with every secret sent, and anything shaped like a key, replaced by ***.

        Always redact the whole text before cutting it short: a cut through a key would leave
        a prefix that no longer matches."""
        secrets = set(self._secrets)
        # Query values may be keys too (``?key=...``); short ones (api-version) are not.
        query = urlsplit(self.base_url).query
        secrets.update(v for part in query.split("&") for v in part.split("=")[1:] if len(v) >= 8)
        for s in sorted(secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        return _SECRETISH.sub(lambda m: (m.group(1) or "") + "***", text)

    # -- clients ------------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        # Loopback traffic never goes through a proxy from the environment (HTTP_PROXY and
        # friends without a NO_PROXY would send 127.0.0.1 away).
        local = is_loopback(urlsplit(self.base_url).hostname)
        return {"timeout": self._timeout(), "trust_env": not local, "verify": _ssl_context()}

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(**_TIMEOUT) if self.timeout is None else httpx.Timeout(self.timeout)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(**self._client_options())
        return self._client

    @property
    def aclient(self) -> httpx.AsyncClient:
        """The AsyncClient of the running event loop (each loop gets its own)."""
        import asyncio

        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            # A closed loop's client can never be used again; forget it (and its loop).
            for old in [lp for lp in list(self._aclients) if lp.is_closed()]:
                self._aclients.pop(old, None)
            client = httpx.AsyncClient(**self._client_options())
            self._aclients[loop] = client
        return client

    def fresh(self) -> OpenAICompatible:
        """A copy with the same settings and its own HTTP clients (for ``Chat.copy``)."""
        import copy

        new = copy.copy(self)
        new._client = None
        new._aclients = weakref.WeakKeyDictionary()
        new._secrets = set()
        new.params = copy.deepcopy(self.params)
        new.api_args = copy.deepcopy(self.api_args)
        new.api_headers = dict(self.api_headers)
        return new

    def new_async_client(self, max_connections: int = 100) -> httpx.AsyncClient:
        """A fresh async client with this provider's settings and room for ``max_connections``
        at once; the caller owns it (``parallel_chat`` shares one among its copies)."""
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return httpx.AsyncClient(**self._client_options(), limits=limits)

    def use_async_client(self, client: httpx.AsyncClient | None) -> None:
        """Send this event loop's async requests through ``client`` (not closed here); None:
        forget it, so the next request makes its own."""
        import asyncio

        loop = asyncio.get_running_loop()
        if client is None:
            self._aclients.pop(loop, None)
        else:
            self._aclients[loop] = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        # An AsyncClient can only be closed from its loop; dropping it lets the GC release it.
        self._aclients = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        name, model = getattr(self, "name", "?"), getattr(self, "model", None)
        url = safe_url(getattr(self, "base_url", ""))
        return f"<OpenAICompatible {name!r} model={model or '(auto)'} url={url}>"

    # -- model discovery ----------------------------------------------------------------------

    def list_models(self) -> list[str]:
        url = self.url("models")
        try:
            resp = self.client.get(url, headers=self.headers())
        except httpx.HTTPError as exc:
            raise self._map_transport(exc, "GET", url) from None
        return self._model_ids(resp, url)

    async def alist_models(self) -> list[str]:
        """``list_models`` without blocking the event loop."""
        url = self.url("models")
        try:
            resp = await self.aclient.get(url, headers=self.headers())
        except httpx.HTTPError as exc:
            raise self._map_transport(exc, "GET", url) from None
        return self._model_ids(resp, url)

    def _model_ids(self, resp: httpx.Response, url: str) -> list[str]:
        if 300 <= resp.status_code < 400:
            raise self._redirected(resp, url, "GET")
        if resp.status_code >= 400:
            raise self._map_status(resp.status_code, resp.headers, resp.text, "GET", url)
        try:
            data = resp.json()["data"]
            return [str(m["id"]) for m in data]
        except (ValueError, KeyError, TypeError):
            raise ConfigurationError(
                f"GET {safe_url(url)} did not return an OpenAI-style model list",
                hint="pass model= explicitly",
            ) from None

    def resolve_model(self) -> str:
        """The configured model, or the only one the server offers."""
        if self.model:
            return self.model
        return self._pick_model(self.list_models())

    async def aresolve_model(self) -> str:
        """``resolve_model`` for async callers: asks ``/models`` without blocking the loop."""
        if self.model:
            return self.model
        return self._pick_model(await self.alist_models())

    def _pick_model(self, ids: list[str]) -> str:
        if len(ids) == 1:
            self.model = ids[0]
            return self.model
        offered = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "") if ids else "none"
        raise ConfigurationError(
            f"no model given and {self.display_url} offers {len(ids)} models: {offered}",
            hint="pass model=... (or %config ChatMagics.model = ...)",
        )

    # -- sending ------------------------------------------------------------------------------

    def _request(self, client: httpx.Client | httpx.AsyncClient, body: dict[str, Any]) -> httpx.Request:
        headers = self.headers()
        if body.get("stream") and not any(k.lower() == "accept" for k in headers):
            headers["Accept"] = "text/event-stream"
        return client.build_request(
            "POST", self.url("chat/completions"), headers=headers, content=json.dumps(body)
        )

    @contextmanager
    def stream(self, body: dict[str, Any]) -> Iterator[Iterator[str]]:
        """POST ``body`` (retrying as allowed) and yield an iterator over the SSE data fields."""
        resp = self._send(body)
        try:
            yield self._iter_data(resp)
        finally:
            resp.close()

    def _send(self, body: dict[str, Any]) -> httpx.Response:
        url = self.url("chat/completions")
        for attempt in range(1, self.max_tries + 1):
            try:
                resp = self.client.send(self._request(self.client, body), stream=True)
            except _connect_class() as exc:
                if attempt < self.max_tries:
                    time.sleep(_backoff(attempt, None))
                    continue
                raise self._map_transport(exc, "POST", url) from None
            except httpx.HTTPError as exc:
                raise self._map_transport(exc, "POST", url) from None
            if resp.status_code < 300:
                return resp
            if resp.status_code < 400:
                resp.close()
                raise self._redirected(resp, url)
            try:
                # Redacted as it is read: the raw body (a key echoed back) is never a local.
                text = self.redact(resp.read().decode("utf-8", "replace"))
            except httpx.HTTPError:
                text = ""
            finally:
                resp.close()
            wait = self._retry_wait(attempt, resp)
            if _fallback_handles(body, resp.status_code, text):
                wait = None
            if wait is None:
                raise self._map_status(resp.status_code, resp.headers, text, "POST", url)
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _iter_data(self, resp: httpx.Response) -> Iterator[str]:
        from httpx_sse import EventSource, SSEError

        url = self.url("chat/completions")
        if not _is_sse(resp):
            # A server that ignored "stream": true answers with one JSON document.
            try:
                yield resp.read().decode("utf-8", "replace")
            except httpx.HTTPError as exc:
                raise self._map_stream(exc, url) from None
            return
        try:
            for sse in EventSource(resp).iter_sse():
                yield sse.data
        except (httpx.HTTPError, SSEError) as exc:
            raise self._map_stream(exc, url) from None

    @asynccontextmanager
    async def astream(self, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[str]]:
        resp = await self._asend(body)
        try:
            yield self._aiter_data(resp)
        finally:
            await resp.aclose()

    async def _asend(self, body: dict[str, Any]) -> httpx.Response:
        url = self.url("chat/completions")
        client = self.aclient
        for attempt in range(1, self.max_tries + 1):
            try:
                resp = await client.send(self._request(client, body), stream=True)
            except _connect_class() as exc:
                if attempt < self.max_tries:
                    await _asleep(_backoff(attempt, None))
                    continue
                raise self._map_transport(exc, "POST", url) from None
            except httpx.HTTPError as exc:
                raise self._map_transport(exc, "POST", url) from None
            if resp.status_code < 300:
                return resp
            if resp.status_code < 400:
                await resp.aclose()
                raise self._redirected(resp, url)
            try:
                text = self.redact((await resp.aread()).decode("utf-8", "replace"))  # as in _send
            except httpx.HTTPError:
                text = ""
            finally:
                await resp.aclose()
            wait = self._retry_wait(attempt, resp)
            if _fallback_handles(body, resp.status_code, text):
                wait = None
            if wait is None:
                raise self._map_status(resp.status_code, resp.headers, text, "POST", url)
            await _asleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _aiter_data(self, resp: httpx.Response) -> AsyncIterator[str]:
        from httpx_sse import EventSource, SSEError

        url = self.url("chat/completions")
        try:
            if not _is_sse(resp):
                yield (await resp.aread()).decode("utf-8", "replace")
                return
            async for sse in EventSource(resp).aiter_sse():
                yield sse.data
        except (httpx.HTTPError, SSEError) as exc:
            raise self._map_stream(exc, url) from None

    def _redirected(self, resp: httpx.Response, url: str, method: str = "POST") -> APIStatusError:
        """A redirect is not followed (a POST would lose its body, or a key its https): say where."""
        location = resp.headers.get("location", "")
        target = safe_url(str(resp.url.join(location))) if location else "(no Location header)"
        reason = httpx.codes.get_reason_phrase(resp.status_code)
        return APIStatusError(
            f"{resp.status_code} {reason}: {method} {safe_url(url)} is redirected to {target}",
            status_code=resp.status_code, url=safe_url(url),
            hint="use the URL it redirects to, without its last part, as base_url",
        )

    def _retry_wait(self, attempt: int, resp: httpx.Response) -> float | None:
        """Seconds to wait before trying again, or None to give up now."""
        if resp.status_code not in RETRY_STATUSES or attempt >= self.max_tries:
            return None
        wait = _backoff(attempt, resp.headers.get("retry-after"))
        return wait if wait <= MAX_RETRY_WAIT else None

    # -- error mapping: the one place lower-level errors become LLMChatError --------------------

    def _map_transport(self, exc: httpx.HTTPError, method: str, url: str) -> LLMChatError:
        where = f"{method} {safe_url(url)}"
        if isinstance(exc, httpx.ReadTimeout):
            waited = self._timeout().read
            return TransportError(
                f"{where} timed out: no answer within {waited:g} s ({type(exc).__name__})",
                hint="a slow or busy model may need a longer timeout= (seconds)",
            )
        if isinstance(exc, httpx.TimeoutException):
            return TransportError(f"{where} timed out ({type(exc).__name__})")
        if isinstance(exc, httpx.ConnectError):
            return TransportError(f"cannot connect to {where}: {self.redact(str(exc)) or 'refused'}")
        if isinstance(exc, _connect_class()):
            # It accepted the connection, so it runs; it dropped the request before answering
            # (a POST was sent again first: GET /models is asked once).
            return TransportError(
                f"{where}: the server closed the connection before answering ({type(exc).__name__})",
                hint="the server is busy or restarting: try again, or send fewer requests at once "
                "(parallel_chat's max_active)",
            )
        return TransportError(f"{where} failed: {type(exc).__name__}: {self.redact(str(exc))}")

    def _map_stream(self, exc: Exception, url: str) -> StreamError:
        return StreamError(
            f"the answer's stream from {safe_url(url)} broke: {type(exc).__name__}: "
            f"{self.redact(str(exc))[:200]}"
        )

    def _map_status(
        self, status: int, headers: httpx.Headers, text: str, method: str, url: str
    ) -> APIStatusError:
        text = self.redact(text)  # before any cut (see redact)
        detail = _error_detail(text)
        reason = httpx.codes.get_reason_phrase(status)
        # The server's own words first: narrow places (the chat panel) cut the end off.
        msg = f"{status} {reason}" + (f": {detail}" if detail else "") + f" ({method} {safe_url(url)})"
        kwargs: dict[str, Any] = {"status_code": status, "url": safe_url(url), "body": text[:2000]}
        if status in (401, 403):
            return AuthenticationError(msg, **kwargs)
        if status == 400 and _KEY_REFUSED.search(f"{_error_kind(text)} {detail}"):
            # LiteLLM's proxy answers a key it cannot look up with a 400 ("No connected db.").
            return AuthenticationError(
                msg, hint="the server refused the key (wrong, or unknown to it): check credentials: "
                "the API key, or what credentials= returns", **kwargs,
            )
        if status == 429:
            retry = _retry_after(headers.get("retry-after"))
            hint = f"rate limited: retry after {retry:.0f} s" if retry is not None else ""
            return RateLimitError(msg, hint=hint, **kwargs)
        if _CONTEXT_EXCEEDED.search(text):
            return APIStatusError(
                "the conversation is longer than the model's context window: " + msg,
                hint="start the session afresh with %%chat --new (or chat.reset()), "
                "or send a shorter prompt",
                **kwargs,
            )
        if status >= 500:
            return ServerError(msg, **kwargs)
        if status == 404:
            return APIStatusError(msg, hint="check the model name and base_url", **kwargs)
        if status == 413:
            return APIStatusError(
                msg, hint="the request is too large: send less, or start a new conversation",
                **kwargs,
            )
        return APIStatusError(msg, hint="the server refused the request: check model, params and api_args", **kwargs)


#: api_headers names that carry a secret (for the plain-http warning); credentials() always do.
_AUTH_HEADER = re.compile(r"auth|key|token|secret|cookie", re.IGNORECASE)

# How servers word "the prompt does not fit": OpenAI's code, llama.cpp's and vLLM's messages.
_CONTEXT_EXCEEDED = re.compile(
    r"context_length_exceeded|exceeds? the available context size|maximum context length"
    r"|exceed context window",
    re.IGNORECASE,
)


# A 400 that is about the key, not the request: LiteLLM's proxy ("No connected db." when its key
# database is unreachable, "Authentication Error" with type auth_error), OpenAI's codes.
_KEY_REFUSED = re.compile(
    r"no_db_connection|no connected db|\bauth(entication)?[_ ]error|authenticat|unauthori[sz]ed"
    r"|invalid[_ ]api[_ ]key|incorrect api key|api[_ ]key|invalid.{0,20}\btoken\b|credential",
    re.IGNORECASE,
)


def _connect_class() -> tuple[type[httpx.HTTPError], ...]:
    """Errors of a request that got no byte of an answer: the connection was refused, timed
    out opening, or was reset or closed before the response began. Nothing was generated, so
    these are retried (a read timeout is not: the server may be working on it)."""
    return (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
            httpx.RemoteProtocolError)


def _error_kind(text: str) -> str:
    """The ``type`` and ``code`` of an OpenAI-style error body ("" when it has none)."""
    try:
        err = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(err, dict):
        return ""
    return " ".join(str(err.get(k)) for k in ("type", "code") if isinstance(err.get(k), str))


def _set_header(headers: dict[str, str], name: str, value: str) -> None:
    """Set ``name`` replacing any spelling of it: header names are case-insensitive, and a
    plain dict update would send both ``Authorization`` and ``authorization``."""
    for old in [k for k in headers if k.lower() == name.lower()]:
        del headers[old]
    headers[name] = value


def refuses_json_schema(status: int, text: str) -> bool:
    """The server validated response_format and does not know ``json_schema`` (LiteLLM passes
    llama-cpp-python's 422 on as a 500); a request it refused produced nothing."""
    return status in (400, 422, 500) and "response_format" in text and "json_schema" in text


def _fallback_handles(body: dict[str, Any], status: int, text: str) -> bool:
    """A json_schema request the server refused: ``chat_structured`` asks again as json_object
    at once, so retries first would only wait (16 s against LiteLLM) for the same refusal."""
    fmt = body.get("response_format")
    schema = isinstance(fmt, dict) and fmt.get("type") == "json_schema"
    return schema and refuses_json_schema(status, text)


def _is_sse(resp: httpx.Response) -> bool:
    return "text/event-stream" in resp.headers.get("content-type", "")


def _error_detail(text: str) -> str:
    """The server's own error message, from the usual JSON shapes or the raw text."""
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if isinstance(msg, str):
                return msg[:300]
        elif isinstance(err, str):
            return err[:300]
        if isinstance(data.get("detail"), str):
            return str(data["detail"])[:300]
    return " ".join(text.split())[:300]


def _ssl_context() -> ssl.SSLContext:
    """One verifying SSL context per process, shared by every client.

    Loading the CA bundle costs 20-400 ms, which httpx pays for every new client (every Chat,
    copy and event loop) even for plain http. Same CA choice as httpx's own (``SSL_CERT_FILE``,
    ``SSL_CERT_DIR``, else certifi), looked up again if those variables change."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    contexts = process.ssl_contexts
    ctx = contexts.get(key)
    if ctx is None:
        ctx = contexts[key] = httpx.create_ssl_context(verify=True, trust_env=True)
    return ctx


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        import email.utils  # only for the rare HTTP-date form; kept off the import path

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT; a naive one would be read as local time
            import datetime

            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN: unreadable


def _backoff(attempt: int, retry_after: str | None) -> float:
    """Exponential backoff with jitter; a Retry-After header (seconds or HTTP date) wins."""
    wait = _retry_after(retry_after)
    if wait is not None:
        return wait
    return min(8.0, 0.5 * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


async def _asleep(seconds: float) -> None:
    import asyncio  # imported here: the sync path (and ``import jupyter_llmchat``) never needs it

    await asyncio.sleep(seconds)


def env_credentials(var: str) -> Credentials:
    """Credentials read from environment variable ``var`` at every request."""

    def read() -> str | None:
        return os.environ.get(var) or None

    read.__qualname__ = f"env_credentials({var!r})"
    return read


def credentials_from(credentials: Any, env_var: str | None) -> Credentials | None:
    """``credentials=`` as given to a preset, as a function called per request: a str is a
    fixed key, a function is kept, None reads ``env_var`` (if any) at every request."""
    if credentials is None:
        return env_credentials(env_var) if env_var else None
    if isinstance(credentials, str):
        key = credentials
        return lambda: key
    if callable(credentials):
        return credentials  # type: ignore[no-any-return]
    raise ConfigurationError(
        "credentials must be a str, a zero-argument function, or None",
        hint=f"got a {type(credentials).__name__}",
    )
