"""The embedded local model against the real llama.cpp server and gemma-3-270m.

The model is tiny and its answers are odd: these tests assert protocol facts, never wording.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from jupyter_llmchat import _local
from jupyter_llmchat._errors import TransportError
from jupyter_llmchat._local import MODEL_ALIAS, LocalServer, ensure_local_server, stop_local_server

pytestmark = pytest.mark.realmodel

REPO = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "Count from one to twenty, in words."}]


def _chat(server: LocalServer, **body: Any) -> httpx.Response:
    payload = {"model": MODEL_ALIAS, "messages": PROMPT, "temperature": 0, **body}
    return httpx.post(f"{server.base_url}/chat/completions", json=payload, timeout=120)


def _env() -> dict[str, str]:
    """This environment, with the repository importable (the package may not be installed)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def _refused(base_url: str) -> bool:
    try:
        httpx.get(f"{base_url}/models", timeout=2)
    except httpx.TransportError:
        return True
    return False


def test_models_lists_the_alias(local_server: LocalServer) -> None:
    assert local_server.base_url.startswith("http://127.0.0.1:")
    assert local_server.base_url.endswith("/v1")
    assert local_server.model == MODEL_ALIAS
    response = httpx.get(f"{local_server.base_url}/models", timeout=10)
    assert response.status_code == 200
    assert MODEL_ALIAS in [model["id"] for model in response.json()["data"]]


def test_streamed_answer_arrives_in_chunks(local_server: LocalServer) -> None:
    payload = {"model": MODEL_ALIAS, "messages": PROMPT, "stream": True, "max_tokens": 24}
    data: list[str] = []
    with httpx.stream(
        "POST", f"{local_server.base_url}/chat/completions", json=payload, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data.append(line[len("data: ") :])
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([piece for piece in content if piece]) >= 2
    reasons = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
    assert [reason for reason in reasons if reason] == [reasons[-1]]
    assert reasons[-1] in ("stop", "length")


def test_max_tokens_gives_finish_reason_length(local_server: LocalServer) -> None:
    response = _chat(local_server, max_tokens=5)
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


def test_non_streamed_answer_carries_usage(local_server: LocalServer) -> None:
    response = _chat(local_server, max_tokens=16)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == MODEL_ALIAS
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_ensure_local_server_reuses_the_running_server(local_server: LocalServer) -> None:
    statuses: list[str] = []
    assert ensure_local_server(statuses.append) is local_server
    assert ensure_local_server(statuses.append) is local_server
    assert statuses == []  # nothing started, nothing announced
    assert local_server.running


def test_ensure_local_server_restarts_a_dead_server(
    local_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registry of its own, so the session's server is left alone.
    monkeypatch.setattr(_local, "_server", None)
    statuses: list[str] = []
    try:
        first = ensure_local_server(statuses.append)
        assert statuses == [f"starting local model {MODEL_ALIAS}..."]
        assert first is not local_server
        assert first.pid is not None
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        second = ensure_local_server(statuses.append)
        assert second is not first
        assert second.running
        assert len(statuses) == 2
        assert httpx.get(f"{second.base_url}/models", timeout=10).status_code == 200
    finally:
        stop_local_server()


def test_stop_ends_the_process(local_server: LocalServer) -> None:
    server = LocalServer().start()
    pid, base_url, log_path = server.pid, server.base_url, server.log_path
    assert pid is not None and log_path is not None and log_path.is_file()
    assert server.startup_seconds is not None
    server.stop()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone and reaped
    assert _refused(base_url)
    assert not log_path.exists()
    server.stop()  # idempotent


def test_context_manager_stops_the_server(local_server: LocalServer) -> None:
    with LocalServer() as server:
        base_url = server.base_url
        assert httpx.get(f"{base_url}/models", timeout=10).status_code == 200
    assert not server.running
    assert _refused(base_url)


def test_a_server_that_dies_while_starting_fails_fast(
    local_server: LocalServer, tmp_path: Path
) -> None:
    server = LocalServer(gguf=tmp_path / "no-such-model.gguf")
    with pytest.raises(TransportError, match="exited with code") as info:
        server.start(timeout=60)
    assert "no-such-model.gguf" in str(info.value)  # the log's last lines are in the message
    assert not server.running
    server.stop()


def _first_line(stream: Any, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


def test_cli_local_runs_in_the_foreground_until_ctrl_c(
    local_server: LocalServer, tmp_path: Path
) -> None:
    port = _local._free_port("127.0.0.1")
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_llmchat", "local", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=_env(),
            cwd=tmp_path,
        )
    try:
        base_url = _first_line(proc.stdout, timeout=120).strip()
        assert base_url == f"http://127.0.0.1:{port}/v1"
        response = httpx.get(f"{base_url}/models", timeout=10)
        assert MODEL_ALIAS in [model["id"] for model in response.json()["data"]]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        assert "%config ChatMagics.base_url" in proc.stdout.read()
        assert _refused(base_url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert "starting local model" in (tmp_path / "stderr.txt").read_text()


def test_server_stops_when_python_exits(local_server: LocalServer) -> None:
    script = (
        "from jupyter_llmchat._local import ensure_local_server\n"
        "server = ensure_local_server()\n"
        "print(server.pid, server.base_url, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    pid, base_url = done.stdout.split()
    # atexit stopped (and reaped) the server before the interpreter finished.
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    assert _refused(base_url)
