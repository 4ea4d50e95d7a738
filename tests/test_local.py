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

from jupyter_llmchat import _sessions, chat_openai_compatible, params
from jupyter_llmchat._local import _model as _local
from jupyter_llmchat._errors import APIStatusError, TransportError
from jupyter_llmchat._local._model import MODEL_ALIAS, LocalServer, ensure_local_server, stop_local_server
from jupyter_llmchat._sessions import local_chat
from jupyter_llmchat._core._turns import ContentText, Turn
from tests.fake_openai import FakeOpenAI

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
    monkeypatch.setattr(_local._slot, "server", None)
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
        "from jupyter_llmchat._local._model import ensure_local_server\n"
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


# -- the base-model format, exact tokens ----------------------------------------------------------

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _sse(server: LocalServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    payload = {"model": MODEL_ALIAS, "messages": QUESTION, "stream": True, **body}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=payload, timeout=120) as response:
        assert response.status_code == 200
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def test_a_short_question_ends_by_itself(local_server: LocalServer) -> None:
    response = _chat(local_server, messages=QUESTION, max_tokens=64)
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] < 64


def test_streamed_usage_chunk_matches_the_whole_answer(local_server: LocalServer) -> None:
    settings = {"temperature": 0, "seed": 7, "max_tokens": 48}
    chunks = _sse(local_server, {**settings, "stream_options": {"include_usage": True}})
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert chunks[-1]["choices"] == []
    whole = _chat(local_server, messages=QUESTION, **settings).json()
    # The same answer, counted by the same tokenizer, whether streamed or not.
    assert usage_chunks[0]["usage"] == whole["usage"]
    # Not asked, not sent (the OpenAI protocol).
    assert not any(c.get("usage") for c in _sse(local_server, settings))


def test_the_identity_endpoint_answers_with_the_parents_token(local_server: LocalServer) -> None:
    root = local_server.base_url.rsplit("/v1", 1)[0]
    who = httpx.get(f"{root}/extras/jupyter-llmchat/identity", timeout=10).json()
    assert who["token"] and who["token"] == local_server._token
    assert who["model"] == MODEL_ALIAS


def test_another_server_on_the_port_is_not_taken_for_ours(local_server: LocalServer) -> None:
    with FakeOpenAI() as other:  # answers GET /v1/models with 200, like any server would
        server = LocalServer(port=other.port)
        with pytest.raises(TransportError):
            server.start(timeout=60)
        assert not server.running


def test_local_session_records_exact_tokens_and_zero_cost(local_server: LocalServer) -> None:
    chat = local_chat(params=params(max_tokens=32))
    pieces = list(chat.stream("What is the capital of Italy?"))
    assert pieces
    reply = chat.last_turn()
    assert reply is not None and reply.tokens is not None
    assert reply.tokens.input is not None and reply.tokens.input > 0
    assert reply.tokens.output is not None and reply.tokens.output > 0
    assert reply.cost == 0.0
    copy = chat.copy()
    copy.chat("And of Spain?")
    assert copy.provider.base_url == local_server.base_url
    assert [t.role for t in copy.get_turns()] == ["user", "assistant"] * 2
    assert len(chat.get_turns()) == 2  # the original is untouched


# -- the context window ----------------------------------------------------------------------------


def _long_history(n: int) -> list[Turn]:
    filler = "The quick brown fox jumps over the lazy dog near the river bank. " * 40
    turns = []
    for i in range(n):
        turns += [Turn("user", [ContentText(f"Exchange {i}. {filler}")]), Turn("assistant", [ContentText(filler)])]
    return turns


def test_a_conversation_longer_than_the_context_leaves_the_oldest_turns_out(local_server: LocalServer) -> None:
    chat = local_chat(params=params(max_tokens=8))
    chat.set_turns(_long_history(12))  # ~12 * 2 * 500 tokens, against a 4096-token context
    chat.chat("Hello?")
    user, reply = chat.get_turns()[-2:]
    assert user.meta.get("context_note")
    assert reply.tokens is not None and reply.tokens.input is not None
    assert reply.tokens.input + 8 <= _local.N_CTX
    assert len(chat.get_turns()) == 26  # history keeps everything; only the request was shorter


def test_a_context_overflow_from_the_server_suggests_a_new_session(local_server: LocalServer) -> None:
    # A plain client (no fitting): the server refuses, and the error says what to do.
    chat = chat_openai_compatible(base_url=local_server.base_url, model=MODEL_ALIAS, params=params(max_tokens=8))
    chat.set_turns(_long_history(12))
    with pytest.raises(APIStatusError) as info:
        chat.chat("Hello?")
    assert info.value.status_code == 400
    assert "--new" in (info.value.hint or "")


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
        "the request exceeds the available context size, try increasing it",
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.",
    ],
)
def test_context_errors_of_any_server_suggest_a_new_session(fake: FakeOpenAI, message: str) -> None:
    from tests.fake_openai import Reply

    fake.script(Reply(status=400, error_message=message))
    chat = chat_openai_compatible(base_url=fake.base_url, model="m")
    with pytest.raises(APIStatusError) as info:
        chat.chat("hi")
    assert "--new" in (info.value.hint or "")


# -- lifecycle and proxies ---------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.2)
    return _gone(pid)


@pytest.mark.kernel
def test_server_exits_when_its_kernel_is_killed(local_server: LocalServer) -> None:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env=_env(), cwd=str(REPO), startup_timeout=60)
    pid = None
    try:
        kc.execute(
            "from jupyter_llmchat._local._model import ensure_local_server\n"
            "print('PID', ensure_local_server().pid)\n"
        )
        while pid is None:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["msg_type"] == "stream" and "PID" in msg["content"]["text"]:
                pid = int(msg["content"]["text"].split()[1])
            assert msg["msg_type"] != "error", msg["content"]
        assert not _gone(pid)
        kernel_pid = km.provisioner.process.pid
        os.kill(kernel_pid, signal.SIGKILL)  # no atexit, no shutdown message: only the pipe
        assert _wait_gone(pid, 15)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        if pid is not None and not _gone(pid):
            os.killpg(pid, signal.SIGKILL)


def test_session_from_plain_python_starts_the_model_despite_env_proxies(local_server: LocalServer) -> None:
    dead = _local._free_port("127.0.0.1")  # nothing listens there
    env = {k: v for k, v in _env().items() if k.upper() not in ("NO_PROXY", "OPENAI_BASE_URL", "OPENAI_MODEL")}
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[var] = f"http://127.0.0.1:{dead}"
    script = (
        "import json, logging\n"
        "records = []\n"
        "class H(logging.Handler):\n"
        "    def emit(self, r): records.append(r.levelname)\n"
        "logging.getLogger('jupyter_llmchat').addHandler(H())\n"
        "logging.getLogger('jupyter_llmchat').setLevel(logging.INFO)\n"
        "import jupyter_llmchat\n"
        "chat = jupyter_llmchat.session()\n"
        "chat.chat('hi', params=jupyter_llmchat.params(max_tokens=8))\n"
        "copy = chat.copy()\n"
        "copy.chat('hi again', params=jupyter_llmchat.params(max_tokens=8))\n"
        "r = copy.last_turn()\n"
        "print(json.dumps({'records': records, 'finish': r.finish_reason, 'input': r.tokens.input,\n"
        "                  'output': r.tokens.output, 'cost': r.cost, 'turns': len(copy.get_turns())}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "INFO" in out["records"]  # the model's start was logged
    assert out["finish"] in ("stop", "length")
    assert out["input"] > 0 and out["output"] > 0
    assert out["cost"] == 0.0
    assert out["turns"] == 4


def test_usage_report_shows_the_local_model_as_free() -> None:
    from jupyter_llmchat._jupyter._report import UsageReport
    from jupyter_llmchat._core._turns import Tokens

    chat = local_chat()  # no request: the server is not started
    chat.set_turns([
        Turn("user", [ContentText("hi")]),
        # free: as the bundled model's provider marks each of its answers (Turn.free)
        Turn("assistant", [ContentText("hello")], tokens=Tokens(5, 2), cost=0.0, model=MODEL_ALIAS,
             free=True),
    ])  # fmt: skip
    assert chat.get_cost() == 0.0
    report = repr(UsageReport({"default": chat}))
    assert report.rstrip().endswith("$0, local")  # the cost column: free, not "n/a"


def test_the_panel_shows_the_local_model_as_free(local_server: LocalServer) -> None:
    import jupyter_llmchat
    from tests.panel_recorder import RecordingPanel

    jupyter_llmchat.use(local_chat(params=params(max_tokens=16)), "local-panel")
    panel = RecordingPanel("local-panel")
    try:
        panel.ask("What is the capital of Italy?")
        panel.finish(120)
        [final] = [m for m in panel.sent if m["type"] == "done"]
        assert final["message"]["cost_usd"] == 0.0 and final["message"]["free"] is True
        assert panel.usage["cost_usd"] == 0.0 and panel.usage["free"] is True
    finally:
        panel.close()
        _sessions.drop("local-panel")
