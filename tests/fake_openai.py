"""A scriptable OpenAI-compatible server for the test suite (stdlib only).

Real HTTP on 127.0.0.1 at an OS-picked port, so the client under test goes through its real
transport. Three ways to use it::

    with FakeOpenAI() as srv:                     # 1. in-process, in a thread
        srv.script(Reply(text="Hi"), Reply(status=429, headers={"Retry-After": "0"}))
        ...  # point the client at srv.base_url
        srv.last_body()

    def test_x(fake, fake_url): ...               # 2. pytest fixtures (tests/conftest.py)

    # 3. a subprocess, for kernels, JupyterLab and benchmarks:
    python -m tests.fake_openai --port 0 [--chunks N --chunk-chars K --delay S --no-usage]

The subprocess prints ``READY http://127.0.0.1:PORT/v1`` as its first line of stdout and serves
until killed. Another process scripts it over HTTP (``FakeOpenAIProcess`` wraps this):

- ``POST /_control/script``: a JSON list of reply specs (the fields of ``Reply``), queued;
- ``GET /_control/requests``: the recorded requests as JSON;
- ``GET /_control/stats``: ``{"active", "max_active"}``, concurrent chat-completions requests;
- ``POST /_control/reset``: empty the queue and the log, restore the settings;
- ``POST /_control/config``: set any of ``models``, ``models_status``, ``require_auth``,
  ``default_reply`` (a reply spec), ``fit`` (the bundled model's context fit, see
  ``FakeOpenAI.fit``).

Requests to ``/_control/*`` are not recorded. Paths are matched on their suffix, so both
``/v1/chat/completions`` and ``/chat/completions`` answer.
"""

from __future__ import annotations

import abc
import argparse
import collections
import copy
import dataclasses
import itertools
import json
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

__all__ = [
    "AUTO_USAGE",
    "FakeOpenAI",
    "FakeOpenAIProcess",
    "RecordedRequest",
    "Reply",
    "big_text",
    "main",
    "wire_chunk",
    "wire_completion",
]

AUTO_USAGE: Literal["auto"] = "auto"
"""``Reply.usage`` default: prompt_tokens 11, completion_tokens = number of content chunks."""

PROMPT_TOKENS = 11
#: The bundled model's server's context-fit route (``_llama_server.py``), answered when configured.
_FIT_PATH = "/extras/jupyter-llmchat/fit"
DEFAULT_MODELS = ("test-model",)

# A client that stops reading mid-stream is normal, not a server bug: never print these.
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass
class Reply:
    """One scripted answer to ``POST /v1/chat/completions``.

    The stream-breaking fields count content chunks: ``cut_after=2``, ``malformed_at=2`` and
    ``error_event_at=2`` all act once two content chunks have been sent (0 means before the
    first; ``len(chunks)`` means after the last, before the finish chunk). They apply to
    streaming requests only.
    """

    text: str = "Hello from the fake server."
    chunks: list[str] | None = None
    """Explicit stream pieces (their concatenation is the answer); None: split ``text``."""
    chunk_chars: int = 8
    """When ``chunks`` is None, ``text`` is streamed in pieces of this many characters."""
    reasoning: str | None = None
    """Streamed first as ``delta.reasoning_content``; ``message.reasoning_content`` otherwise."""
    usage: dict[str, Any] | None | Literal["auto"] = AUTO_USAGE
    """``AUTO_USAGE``: 11 prompt tokens, one completion token per content chunk; None: no usage."""
    usage_in_stream: bool = True
    """Stream a usage chunk, when the request also asked for it (stream_options.include_usage)."""
    finish_reason: str = "stop"
    model: str | None = None
    """``model`` of the response; None: the request's model."""
    delay: float = 0.0
    """Seconds to sleep before each ``chat.completion.chunk`` event."""
    status: int = 200
    """Not 200: answer with an OpenAI-style error body instead (JSON, even for streams)."""
    error_message: str = "scripted error"
    """The message of the error body (status != 200) and of the ``error_event_at`` event."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers, e.g. ``{"Retry-After": "0"}``."""
    cut_after: int | None = None
    """Close the connection abruptly after this many content chunks (no finish, no [DONE])."""
    malformed_at: int | None = None
    """Send a ``data:`` line that is not JSON before content chunk i, then go on."""
    error_event_at: int | None = None
    """Send ``data: {"error": {...}}`` before content chunk i, then end the body (no [DONE])."""
    hang: float = 0.0
    """Seconds to sleep before sending the response headers (for timeouts)."""
    tool_calls: list[dict[str, Any]] | None = None
    """OpenAI-format tool calls (``{"id", "type": "function", "function": {name, arguments}}``).

    Streamed after the text: each call's first chunk carries its ``index``, ``id`` and name,
    then its ``arguments`` follow in pieces of ``tool_args_chars`` characters."""
    tool_args_chars: int = 0
    """Pieces of this many characters for streamed tool-call arguments; 0: in one piece."""
    interleave_tool_calls: bool = False
    """Stream the calls' argument pieces in turn (call 0, call 1, call 0, ...), as some servers do."""
    cut_in_tool_calls: int | None = None
    """Close the connection abruptly after this many tool-call chunks."""
    json: Any = None
    """When not None, the answer's text is ``json.dumps(json)`` (for ``response_format`` requests)."""
    gate: int = 0
    """Hold the answer until this many chat-completions requests are in progress at once (at
    most 10 s): a client that sends them one after the other then shows ``max_active`` 1."""
    """OpenAI-format tool calls (``{"id", "type": "function", "function": {name, arguments}}``)."""
    extra_events: list[tuple[int, str]] = field(default_factory=list)
    """``(i, payload)``: send ``data: payload`` (raw, any text) before content chunk i, then go
    on; for chunks of odd shapes (``{"choices": []}``, a non-object delta, ...)."""
    write_bytes: int | None = None
    """Send the streamed body in writes of at most this many bytes, each flushed on its own
    (splits events, UTF-8 sequences and line ends across network reads)."""
    line_end: str = "\n"
    """What ends each SSE line: "\n", "\r\n" or "\r" (all three are valid SSE)."""
    raw_body: Any = None
    """When not None, the whole response body, sent with ``status`` instead of the generated one
    (as JSON; a str is sent as it is), to streaming requests too: a real server's odd answer
    (``wire_completion(...)``) or error body (vLLM's ``{"error": "Unauthorized"}``)."""
    raw_events: list[str] | None = None
    """When not None and the request streams: these ``data:`` payloads, verbatim and in order,
    are the whole stream (add ``"[DONE]"`` yourself); build them with ``wire_chunk(...)``."""
    drop: str | None = None
    """End the connection before any byte of the answer: "close" (a clean close: the client
    reads "disconnected without sending a response") or "reset" (a TCP reset)."""
    echo_auth: bool = False
    """Quote the request's Authorization header in the error message (of the error body and of
    the ``error_event_at`` event), as some servers and proxies do."""
    error_body: Any = None
    """When set (and status != 200), the error response's JSON body as given, e.g. LiteLLM's
    ``{"error": {"message": "No connected db.", "type": "no_db_connection"}}``."""

    def __post_init__(self) -> None:
        if self.chunk_chars < 1:
            raise ValueError(f"chunk_chars must be >= 1, got {self.chunk_chars}")
        if self.write_bytes is not None and self.write_bytes < 1:
            raise ValueError(f"write_bytes must be >= 1, got {self.write_bytes}")
        if self.line_end not in ("\n", "\r\n", "\r"):
            raise ValueError(f"line_end must be \\n, \\r\\n or \\r, got {self.line_end!r}")
        # From JSON, pairs arrive as lists.
        self.extra_events = [(int(i), str(p)) for i, p in self.extra_events]

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Reply:
        """Build a reply from a JSON spec; unknown keys are an error, not silently ignored."""
        if not isinstance(spec, dict):
            raise ValueError(f"a reply spec must be a JSON object, got {spec!r}")
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Reply fields: {sorted(unknown)}")
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        """The JSON spec ``from_dict`` accepts."""
        return dataclasses.asdict(self)

    def pieces(self) -> list[str]:
        """The content chunks this reply streams."""
        if self.chunks is not None:
            return list(self.chunks)
        return _split(self.content(), self.chunk_chars)

    def content(self) -> str:
        """The whole answer text."""
        if self.json is not None:
            return json.dumps(self.json)
        return "".join(self.chunks) if self.chunks is not None else self.text

    def tool_call_deltas(self) -> list[dict[str, Any]]:
        """The ``delta.tool_calls`` entries this reply streams, one per chunk, in order."""
        per_call: list[list[dict[str, Any]]] = []
        for index, call in enumerate(self.tool_calls or []):
            fn = call.get("function") or {}
            args = fn.get("arguments", "")
            head = {"index": index, **{k: v for k, v in call.items() if k != "function"}}
            if not isinstance(args, str) or self.tool_args_chars <= 0:
                per_call.append([{**head, "function": fn}])
                continue
            first = {**head, "function": {k: v for k, v in fn.items() if k != "arguments"}}
            first["function"]["arguments"] = ""
            rest = [{"index": index, "function": {"arguments": piece}}
                    for piece in _split(args, self.tool_args_chars)]
            per_call.append([first, *rest])
        if not self.interleave_tool_calls:
            return [d for deltas in per_call for d in deltas]
        out: list[dict[str, Any]] = []
        for row in itertools.zip_longest(*per_call):
            out.extend(d for d in row if d is not None)
        return out

    def usage_for(self, n_chunks: int) -> dict[str, Any] | None:
        """The usage object to send, or None for none."""
        if self.usage == AUTO_USAGE:
            return {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": n_chunks,
                "total_tokens": PROMPT_TOKENS + n_chunks,
            }
        return self.usage


@dataclass
class RecordedRequest:
    """One request the server received (``/_control/*`` excluded)."""

    method: str
    path: str
    headers: dict[str, str]
    """Lower-case names, values as received (Authorization included)."""
    body: Any
    """Parsed JSON, or None when the body was empty or not JSON (see ``raw``)."""
    raw: str
    time: float
    """``time.time()`` when the request was received."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecordedRequest:
        return cls(**data)

    @property
    def is_chat(self) -> bool:
        return self.method == "POST" and self.path.split("?")[0].endswith("/chat/completions")


class _RequestLog(abc.ABC):
    """Queries shared by the in-process server and the subprocess wrapper."""

    @property
    @abc.abstractmethod
    def requests(self) -> list[RecordedRequest]:
        """The recorded requests, oldest first."""

    def chat_requests(self) -> list[RecordedRequest]:
        """The recorded POSTs to chat/completions, oldest first."""
        return [r for r in self.requests if r.is_chat]

    def last_body(self) -> Any:
        """The parsed body of the last chat-completions request."""
        chats = self.chat_requests()
        if not chats:
            raise LookupError("no chat/completions request was recorded")
        return chats[-1].body


class FakeOpenAI(_RequestLog):
    """The server, run in a thread of this process.

    ``script(*replies)`` queues answers for chat-completions requests (FIFO); an empty queue
    answers with ``default_reply``. ``models``, ``models_status`` and ``require_auth`` may be
    set at any time; ``reset()`` restores them, empties the queue and the request log.
    """

    def __init__(
        self,
        default_reply: Reply | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._initial_default = default_reply or Reply()
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._queue: collections.deque[Reply] = collections.deque()
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._serving = False
        self._stopping = threading.Event()
        self.errors: list[BaseException] = []
        """Unexpected exceptions raised while handling requests (disconnects excluded)."""
        self.default_reply = copy.deepcopy(self._initial_default)
        self.models: list[str] = list(DEFAULT_MODELS)
        self.models_status = 200
        self.require_auth: str | None = None
        """When set, /v1 requests whose Authorization header differs get a 401."""
        self._active_changed = threading.Condition(self._lock)
        self.active = 0
        """Chat-completions requests being answered right now."""
        self.max_active = 0
        """The most chat-completions requests answered at once since the last reset."""
        self.models_gate: threading.Event | None = None
        """In-process only: when set, ``GET /models`` waits (up to 10 s) for this event first."""
        self.fit: dict[str, Any] | None = None
        """When set, ``POST /extras/jupyter-llmchat/fit`` answers as the bundled model's server
        does: ``{"drop": N, "n_ctx": M}``, after ``"delay"`` seconds if given; None: a 404."""
        self._routes: list[tuple[str, collections.deque[Reply]]] = []
        self._current = threading.local()

    # -- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> None:
        """Open the listening socket (done by ``start``; ``serve_forever`` needs it first)."""
        if self._httpd is None:
            self._stopping.clear()
            self._httpd = _Server((self._host, self._port), self)

    def start(self) -> FakeOpenAI:
        """Listen and serve in a daemon thread; returns self."""
        self.bind()
        assert self._httpd is not None
        self._serving = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop`` (used by the command line)."""
        self.bind()
        assert self._httpd is not None
        self._serving = True
        self._httpd.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        """Stop serving, drop open connections (their sleeps end early) and close the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        if self._serving:  # shutdown() waits for serve_forever, forever if it never ran
            httpd.shutdown()
            self._serving = False
        httpd.drop_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return int(self._httpd.server_address[1])

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT``, where ``/_control/*`` lives."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, what a client takes as its base_url."""
        return f"{self.root_url}/v1"

    # -- scripting ---------------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next chat-completions requests, in order."""
        with self._lock:
            self._queue.extend(replies)

    def script_for(self, match: str, *replies: Reply) -> None:
        """Queue replies for the requests whose last user message contains ``match``.

        Checked before the shared queue, so concurrent requests each get their own answers
        whatever order they arrive in. Routes are tried in the order they were added."""
        with self._lock:
            for key, queue in self._routes:
                if key == match:
                    queue.extend(replies)
                    return
            self._routes.append((match, collections.deque(replies)))

    def pending(self) -> int:
        """How many scripted replies have not been used yet."""
        with self._lock:
            return len(self._queue)

    def reset(self) -> None:
        """Forget the queue, the log and the errors; restore the default settings."""
        # A handler of the test before may still be finishing its answer: let it (bounded), and
        # never zero the live count under it (its end would then make ``active`` -1).
        self.wait_idle(timeout=2.0)
        with self._lock:
            self._queue.clear()
            self._routes.clear()
            self._requests.clear()
            self.errors.clear()
            self.default_reply = copy.deepcopy(self._initial_default)
            self.models = list(DEFAULT_MODELS)
            self.models_status = 200
            self.require_auth = None
            self.fit = None
            self.max_active = self.active

    def stats(self) -> dict[str, int]:
        """``{"active": ..., "max_active": ...}``: concurrent chat-completions requests."""
        with self._lock:
            return {"active": self.active, "max_active": self.max_active}
            self.models_gate = None

    def configure(self, settings: dict[str, Any]) -> None:
        """Apply the settings of ``POST /_control/config``."""
        known = {"models", "models_status", "require_auth", "default_reply", "fit"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        if "models" in settings:
            self.models = [str(m) for m in settings["models"]]
        if "models_status" in settings:
            self.models_status = int(settings["models_status"])
        if "require_auth" in settings:
            self.require_auth = settings["require_auth"]
        if "default_reply" in settings:
            self.default_reply = Reply.from_dict(settings["default_reply"])
        if "fit" in settings:
            self.fit = dict(settings["fit"]) if settings["fit"] is not None else None

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    # -- used by the handler -----------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _enter(self) -> None:
        with self._active_changed:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self._active_changed.notify_all()

    def _leave(self) -> None:
        with self._active_changed:
            self.active -= 1
            self._active_changed.notify_all()

    def _wait_for_active(self, n: int, timeout: float = 10.0) -> None:
        with self._active_changed:
            self._active_changed.wait_for(lambda: self.active >= n or self._stopping.is_set(), timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait (bounded) until no chat-completions request is being answered: a client has the
        whole answer a moment before the handler that sent it has finished."""
        with self._active_changed:
            return self._active_changed.wait_for(lambda: self.active == 0, timeout)

    def _next_reply(self) -> Reply:
        with self._lock:
            routed = self._routed(getattr(self._current, "body", None))
            if routed is not None:
                return routed
            return self._queue.popleft() if self._queue else self.default_reply

    def _routed(self, body: Any) -> Reply | None:
        """The next ``script_for`` reply for this request body, if a route matches (lock held)."""
        if not self._routes or not isinstance(body, dict):
            return None
        users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        text = json.dumps(users[-1].get("content")) if users else ""
        for key, queue in self._routes:
            if key in text and queue:
                return queue.popleft()
        return None

    @property
    def in_flight(self) -> int:
        """Chat-completions requests being answered right now (``active``)."""
        return self.active

    @property
    def max_in_flight(self) -> int:
        """The most chat-completions requests answered at once since ``reset`` (``max_active``)."""
        return self.max_active

    def _enter_chat(self, body: Any) -> None:
        self._current.body = body
        self._enter()

    def _leave_chat(self) -> None:
        self._current.body = None
        self._leave()

    def _next_id(self) -> str:
        return f"chatcmpl-fake-{next(self._ids)}"

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server is stopping; False when it is (the caller gives up)."""
        return seconds <= 0 or not self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Idle keep-alive connections would make server_close() wait for their clients.
    block_on_close = False
    # socketserver listens with a backlog of 5: more clients connecting at once (parallel_chat
    # at max_active=10) have their connection retried by the kernel a second later.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECTS) or exc is None:
            return
        if isinstance(exc, OSError) and self.fake._stopping.is_set():
            return
        self.fake.errors.append(exc)
        traceback.print_exc(file=sys.stderr)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle holds the body back
    # until the client's delayed ACK (~40 ms) on a reused connection.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is ``FakeOpenAI.requests``, not stderr."""

    @property
    def fake(self) -> FakeOpenAI:
        return self.server.fake

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- routing -----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        # Read the whole body first, whatever the answer: leftovers would corrupt keep-alive.
        raw = self._read_body()
        path = self.path.split("?", 1)[0]
        text = raw.decode("utf-8", errors="replace")
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        if path.startswith("/_control/"):
            self._control(path, body)
            return
        self.fake._record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                raw=text,
                time=time.time(),
            )
        )
        required = self.fake.require_auth
        if required is not None and self.headers.get("Authorization") != required:
            self._send_error_body(401, "Incorrect API key provided (fake server).")
        elif self.command == "GET" and path.endswith("/models"):
            self._models()
        elif self.command == "POST" and path.endswith(_FIT_PATH) and self.fake.fit is not None:
            self._fit(self.fake.fit)
        elif self.command == "POST" and path.endswith("/chat/completions"):
            self.fake._enter_chat(body)
            try:
                self._chat(body)
            finally:
                self.fake._leave_chat()
        else:
            self._send_error_body(404, f"no route for {self.command} {path} (fake server)")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _control(self, path: str, body: Any) -> None:
        action = path.removeprefix("/_control/")
        try:
            if self.command == "POST" and action == "script":
                if not isinstance(body, list):
                    raise ValueError("expected a JSON list of reply specs")
                self.fake.script(*(Reply.from_dict(spec) for spec in body))
                self._send_json(200, {"queued": self.fake.pending()})
            elif self.command == "GET" and action == "stats":
                self._send_json(200, self.fake.stats())
            elif self.command == "GET" and action == "requests":
                self._send_json(200, [r.to_dict() for r in self.fake.requests])
            elif self.command == "POST" and action == "reset":
                self.fake.reset()
                self._send_json(200, {"ok": True})
            elif self.command == "POST" and action == "config":
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object of settings")
                self.fake.configure(body)
                self._send_json(200, {"ok": True})
            else:
                self._send_error_body(404, f"no control action {self.command} {action}")
        except (TypeError, ValueError) as exc:
            self._send_error_body(400, str(exc))

    # -- endpoints ---------------------------------------------------------------------------

    def _models(self) -> None:
        gate = self.fake.models_gate
        if gate is not None:
            gate.wait(10)
        status = self.fake.models_status
        if status != 200:
            self._send_error_body(status, f"models endpoint scripted to {status}")
            return
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.fake.models
        ]
        self._send_json(200, {"object": "list", "data": data})

    def _fit(self, fit: dict[str, Any]) -> None:
        if not self.fake._sleep(float(fit.get("delay", 0.0))):
            self.close_connection = True
            return
        answer = {"drop": int(fit.get("drop", 0)), "n_ctx": int(fit.get("n_ctx", 4096))}
        self._send_json(200, answer)

    def _chat(self, body: Any) -> None:
        if not isinstance(body, dict):
            self._send_error_body(400, "the request body must be a JSON object")
            return
        reply = self.fake._next_reply()
        if reply.echo_auth:
            quoted = f"{reply.error_message} (Authorization: {self.headers.get('Authorization')})"
            reply = dataclasses.replace(reply, error_message=quoted)
        if reply.gate:
            self.fake._wait_for_active(reply.gate)
        if not self.fake._sleep(reply.hang):
            self.close_connection = True
            return
        if reply.drop is not None:
            self._drop(reply.drop)
            return
        if reply.raw_body is not None:
            self._send_raw(reply.status, reply.raw_body, reply.headers)
            return
        if reply.status != 200 and reply.error_body is not None:
            self._send_json(reply.status, reply.error_body, reply.headers)
            return
        if reply.status != 200:
            self._send_error_body(reply.status, reply.error_message, reply.headers)
            return
        model = reply.model or str(body.get("model") or DEFAULT_MODELS[0])
        if body.get("stream") is True and reply.raw_events is not None:
            self._stream_raw(reply)
        elif body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._stream(reply, model, include_usage)
        else:
            self._complete(reply, model)

    def _complete(self, reply: Reply, model: str) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content()}
        if reply.reasoning is not None:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
            message["content"] = message["content"] or None
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": reply.finish_reason,
        }
        response: dict[str, Any] = {
            "id": self.fake._next_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }
        usage = reply.usage_for(len(reply.pieces()))
        if usage is not None:
            response["usage"] = usage
        self._send_json(200, response, reply.headers)

    def _stream(self, reply: Reply, model: str, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()

        out = _ChunkedWriter(
            self.wfile, batch=reply.delay <= 0 and reply.write_bytes is None, split=reply.write_bytes
        )
        chunk = _ChunkMaker(self.fake._next_id(), model)
        pieces = reply.pieces()
        end = reply.line_end
        extra = collections.defaultdict(list)
        for at, payload in reply.extra_events:
            extra[at].append(payload)

        def event(payload: str) -> bool:
            if not self.fake._sleep(reply.delay):
                return False
            out.write(f"data: {payload}{end}{end}")
            return True

        def cut() -> None:
            out.flush()
            self.close_connection = True

        if not event(chunk.delta({"role": "assistant", "content": ""})):
            return cut()
        for piece in _split(reply.reasoning or "", reply.chunk_chars):
            if not event(chunk.text("reasoning_content", piece)):
                return cut()
        for i in range(len(pieces) + 1):
            if i == reply.cut_after:
                return cut()
            if i == reply.malformed_at:
                out.write('data: {"choices": [{"delta": {"content": "oops' + end + end)
            for payload in extra.get(i, ()):
                out.write(f"data: {payload}{end}{end}")
            if i == reply.error_event_at:
                error = {"message": reply.error_message, "type": "server_error", "code": None}
                out.write(f"data: {json.dumps({'error': error})}{end}{end}")
                out.close()
                return None
            if i < len(pieces) and not event(chunk.text("content", pieces[i])):
                return cut()
        for i, call_delta in enumerate(reply.tool_call_deltas()):
            if i == reply.cut_in_tool_calls:
                return cut()
            if not event(chunk.delta({"tool_calls": [call_delta]})):
                return cut()
        if not event(chunk.delta({}, finish_reason=reply.finish_reason)):
            return cut()
        usage = reply.usage_for(len(pieces))
        if include_usage and reply.usage_in_stream and usage is not None:
            if not event(chunk.usage(usage)):
                return cut()
        out.write(f"data: [DONE]{end}{end}")
        out.close()
        return None

    def _stream_raw(self, reply: Reply) -> None:
        """``reply.raw_events`` as the whole stream, one ``data:`` event each."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        out = _ChunkedWriter(self.wfile, batch=reply.delay <= 0)
        for payload in reply.raw_events or ():
            if not self.fake._sleep(reply.delay):
                out.flush()
                self.close_connection = True
                return
            out.write(f"data: {payload}{reply.line_end}{reply.line_end}")
        out.close()

    def _send_raw(self, status: int, body: Any, headers: dict[str, str]) -> None:
        if not isinstance(body, str):
            self._send_json(status, body, headers)
            return
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    # -- plumbing ----------------------------------------------------------------------------

    def _drop(self, how: str) -> None:
        """End the connection without answering (``Reply.drop``)."""
        if how not in ("close", "reset"):
            raise ValueError(f"drop must be 'close' or 'reset', got {how!r}")
        self.close_connection = True
        if how == "reset":
            # Linger 0: the close (when the handler's files let go of the socket) sends a RST.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error_body(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        fallback = ("server_error" if status >= 500 else "invalid_request_error", None)
        kind, code = _ERROR_KINDS.get(status, fallback)
        error = {"message": message, "type": kind, "param": None, "code": code}
        self._send_json(status, {"error": error}, headers)


class _ChunkedWriter:
    """HTTP/1.1 chunked body writer.

    ``batch=False`` sends every write at once (the client sees each event as it is written);
    ``batch=True`` gathers writes up to 64 KiB per send, for fast streams with no delay to honour.
    ``split=N`` sends each flush as HTTP chunks of at most N bytes, each flushed on its own.
    """

    _BATCH_BYTES = 1 << 16

    def __init__(self, wfile: Any, batch: bool, split: int | None = None) -> None:
        self._wfile = wfile
        self._batch = batch
        self._split = split
        self._buffer: list[bytes] = []
        self._size = 0

    def write(self, text: str) -> None:
        data = text.encode()
        self._buffer.append(data)
        self._size += len(data)
        if not self._batch or self._size >= self._BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._size:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        step = self._split or len(data)
        for i in range(0, len(data), step):
            part = data[i : i + step]
            self._wfile.write(b"%X\r\n%s\r\n" % (len(part), part))
            self._wfile.flush()

    def close(self) -> None:
        """Flush and send the terminating chunk: the body ends cleanly (keep-alive goes on)."""
        self.flush()
        self._wfile.write(b"0\r\n\r\n")
        self._wfile.flush()


class _ChunkMaker:
    """Serializes ``chat.completion.chunk`` events; text deltas from a template, for speed."""

    def __init__(self, completion_id: str, model: str) -> None:
        self._base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self._templates: dict[str, tuple[str, str]] = {}

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return json.dumps({**self._base, "choices": [choice]})

    def text(self, key: str, piece: str) -> str:
        """``delta({key: piece})``, without re-serializing the envelope for each of 10k chunks."""
        if key not in self._templates:
            marker = "\x00piece\x00"
            head, tail = self.delta({key: marker}).split(json.dumps(marker))
            self._templates[key] = (head, tail)
        head, tail = self._templates[key]
        return head + json.dumps(piece) + tail

    def usage(self, usage: dict[str, Any]) -> str:
        return json.dumps({**self._base, "choices": [], "usage": usage})


def wire_chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    *,
    model: str = "test-model",
    choices: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    **extra: Any,
) -> str:
    """One ``chat.completion.chunk`` as a ``Reply.raw_events`` payload.

    ``delta`` (with ``finish_reason``) makes the usual one choice; ``choices`` replaces it as
    given (``[]`` for a usage or prompt-filter chunk); ``extra`` adds top-level fields
    (``prompt_filter_results``, ...)."""
    if choices is None:
        choices = [{"index": 0, "delta": delta or {}, "logprobs": None,
                    "finish_reason": finish_reason}]
    chunk: dict[str, Any] = {"id": "chatcmpl-raw", "object": "chat.completion.chunk",
                             "created": 0, "model": model, "choices": choices, **extra}
    if usage is not None:
        chunk["usage"] = usage
    return json.dumps(chunk)


def wire_completion(
    message: dict[str, Any],
    finish_reason: str | None = "stop",
    *,
    model: str = "test-model",
    usage: dict[str, Any] | None = None,
    choice: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A whole ``chat.completion`` as a ``Reply.raw_body``: ``message`` is the choice's message
    (``{"role": "assistant", "content": ...}``); ``choice`` adds fields to the choice (Perplexity's
    ``delta``); ``extra`` adds top-level fields."""
    body: dict[str, Any] = {
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason, **(choice or {})}],
        **extra,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def big_text(n_chars: int) -> str:
    """Deterministic Markdown-ish ASCII text of exactly ``n_chars`` characters (and bytes).

    Headings, paragraphs and fenced Python blocks, numbered so no two sections are alike; cut
    at ``n_chars``, so the end may fall inside a block.
    """
    if n_chars < 0:
        raise ValueError(f"n_chars must be >= 0, got {n_chars}")
    parts: list[str] = []
    size = 0
    for i in itertools.count(1):
        if size >= n_chars:
            break
        section = (
            f"## Section {i}\n\n"
            f"Paragraph {i} talks about streaming answers, token counts and the cost of "
            f"sending the same bytes twice. It is item {i} of a long and repetitive answer.\n\n"
            "```python\n"
            f"def section_{i}(x: int) -> int:\n"
            f"    return x * {i} + {i % 7}\n"
            "```\n\n"
            f"- point {i}.a\n- point {i}.b with `code` and **bold**\n\n"
        )
        parts.append(section)
        size += len(section)
    return "".join(parts)[:n_chars]


class FakeOpenAIProcess(_RequestLog):
    """``python -m tests.fake_openai`` in a subprocess, scripted over its control endpoints.

    Same queries as ``FakeOpenAI`` (``requests``, ``chat_requests()``, ``last_body()``), but each
    one is an HTTP round trip.
    """

    ROOT = Path(__file__).resolve().parents[1]

    def __init__(
        self,
        *,
        chunks: int | None = None,
        chunk_chars: int | None = None,
        delay: float | None = None,
        no_usage: bool = False,
        text: str | None = None,
    ) -> None:
        self.args = ["--port", "0"]
        options = {"--chunks": chunks, "--chunk-chars": chunk_chars, "--delay": delay}
        for flag, value in {**options, "--text": text}.items():
            if value is not None:
                self.args += [flag, str(value)]
        if no_usage:
            self.args.append("--no-usage")
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        # Never through a proxy from the environment: the server is on loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def start(self, timeout: float = 30.0) -> FakeOpenAIProcess:
        """Start the subprocess and wait for its READY line."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_openai", *self.args],
            cwd=self.ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake server did not start (first line: {line!r})")
        self.base_url = line.split()[1]
        return self

    def stop(self) -> None:
        """Terminate the subprocess (kill if it lingers)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> FakeOpenAIProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _control(self, method: str, action: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.root_url}/_control/{action}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with self._opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def script(self, *replies: Reply) -> None:
        """Queue replies in the subprocess."""
        self._control("POST", "script", [r.to_dict() for r in replies])

    def reset(self) -> None:
        self._control("POST", "reset", {})

    def configure(self, **settings: Any) -> None:
        """Set ``models``, ``models_status``, ``require_auth`` or ``default_reply`` (a Reply)."""
        if isinstance(settings.get("default_reply"), Reply):
            settings["default_reply"] = settings["default_reply"].to_dict()
        self._control("POST", "config", settings)

    @property
    def requests(self) -> list[RecordedRequest]:
        return [RecordedRequest.from_dict(r) for r in self._control("GET", "requests")]

    def stats(self) -> dict[str, int]:
        """``{"active": ..., "max_active": ...}``: concurrent chat-completions requests."""
        return dict(self._control("GET", "stats"))


def _default_reply(args: argparse.Namespace) -> Reply:
    reply = Reply(chunk_chars=args.chunk_chars, delay=args.delay)
    if args.text is not None:
        reply.text = args.text
    elif args.chunks is not None:
        reply.text = big_text(args.chunks * args.chunk_chars)
    if args.no_usage:
        reply.usage = None
    return reply


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until killed, after printing ``READY <base_url>``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_openai", description="A scriptable OpenAI-compatible server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: let the OS pick")
    parser.add_argument(
        "--chunks", type=int, help="default reply: big_text(CHUNKS * CHUNK_CHARS), so CHUNKS chunks"
    )
    parser.add_argument("--chunk-chars", type=int, default=8, help="characters per streamed chunk")
    parser.add_argument("--text", help="default reply text (overrides --chunks)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each chunk")
    parser.add_argument("--no-usage", action="store_true", help="never send usage")
    args = parser.parse_args(argv)

    server = FakeOpenAI(_default_reply(args), host=args.host, port=args.port)
    server.bind()
    print(f"READY {server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
