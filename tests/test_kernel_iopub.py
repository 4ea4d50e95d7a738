"""What crosses IOPub when ``%%chat`` streams in a real kernel (DESIGN §4 and the §8 targets).

One ipykernel for the module, talking HTTP to the fake server in a subprocess. Sizes are
``len(json.dumps(content))`` of each display message; times are the kernel's own message
timestamps. Run with ``-s`` to see the measured numbers.
"""

from __future__ import annotations

import json
import os
import queue
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_llmchat._core._markdown import safe_markdown
from tests.fake_openai import FakeOpenAIProcess, Reply, big_text

pytestmark = pytest.mark.kernel

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
RATE_HZ = 10.0
DISPLAY = ("display_data", "update_display_data")

Msg = dict[str, Any]


def start_kernel(setup: str) -> Iterator[tuple[Any, Any]]:
    """A python3 kernel from this checkout (no OPENAI_* settings), after running ``setup``."""
    from jupyter_client.manager import start_new_kernel

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(ROOT), startup_timeout=60)
    try:
        reply, _ = execute(kc, setup)
        assert reply["content"]["status"] == "ok", reply["content"]
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel(server: FakeOpenAIProcess) -> Iterator[tuple[Any, Any]]:
    """A kernel with the extension loaded and pointed at the fake server."""
    yield from start_kernel(
        "%load_ext jupyter_llmchat\n"
        f"%config ChatMagics.base_url = {server.base_url!r}\n"
        "%config ChatMagics.model = 'test-model'\n"
        f"%config ChatMagics.display_rate_hz = {RATE_HZ}\n"
    )


@pytest.fixture
def kc(kernel: tuple[Any, Any], server: FakeOpenAIProcess) -> Any:
    """The kernel's client, with every session reset and the fake server's script emptied."""
    _, client = kernel
    server.reset()
    reply, _ = execute(client, "%chat_reset --all")
    assert reply["content"]["status"] == "ok", reply["content"]
    return client


def execute(
    kc: Any,
    code: str,
    *,
    timeout: float = 120,
    on_iopub: Callable[[Msg], None] | None = None,
    cell_id: str | None = None,
) -> tuple[Msg, list[Msg]]:
    """Run ``code``; return the execute_reply and this request's IOPub messages up to idle.

    ``cell_id`` is sent in the request's metadata, as JupyterLab does for a notebook cell.
    """
    if cell_id is None:
        msg_id = kc.execute(code)
    else:
        content = {"code": code, "silent": False, "store_history": True,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
        msg = kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
        kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
    msgs: list[Msg] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no idle within {timeout} s; got {[m['msg_type'] for m in msgs]}")
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(msg)
        if on_iopub is not None:
            on_iopub(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply, msgs


def displays(msgs: list[Msg]) -> list[Msg]:
    return [m for m in msgs if m["msg_type"] in DISPLAY]


def size(msg: Msg) -> int:
    return len(json.dumps(msg["content"]))


def stdout(msgs: list[Msg]) -> str:
    return "".join(
        m["content"]["text"]
        for m in msgs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


def answer_displays(msgs: list[Msg]) -> list[Msg]:
    """The messages of the answer's one display (its display_id), in order."""
    shown = displays(msgs)
    assert shown and shown[0]["msg_type"] == "display_data", [m["msg_type"] for m in msgs]
    display_id = shown[0]["content"]["transient"]["display_id"]
    return [m for m in shown if m["content"].get("transient", {}).get("display_id") == display_id]


def check_no_stdout_answer(msgs: list[Msg], text: str) -> None:
    """Never stdout plus clear_output: the answer travels in display messages only."""
    assert not any(m["msg_type"] == "clear_output" for m in msgs)
    out = stdout(msgs)
    assert text[:40] not in out and text[-40:] not in out, out[:200]


def seconds(a: Msg, b: Msg) -> float:
    return (b["header"]["date"] - a["header"]["date"]).total_seconds()


def wire_size(text: str) -> int:
    """Bytes ``text`` takes inside a JSON message: each newline or quote is escaped to 2 bytes."""
    return len(json.dumps(text, ensure_ascii=False)) - 2


def busiest_second(shown: list[Msg]) -> int:
    """Most display messages sent within any one second (a sliding window, by kernel clock)."""
    return max(
        sum(1 for b in shown[i:] if 0 <= seconds(a, b) < 1.0) for i, a in enumerate(shown)
    )


def measure(label: str, msgs: list[Msg], answer: str) -> dict[str, float]:
    """Count and size one answer's display messages; print them."""
    shown = answer_displays(msgs)
    final, intermediate = shown[-1], shown[:-1]
    numbers = {
        "answer_chars": len(answer),
        "answer_bytes": wire_size(answer),
        "messages": len(shown),
        "intermediate": len(intermediate),
        "streaming_s": seconds(shown[0], final),
        "intermediate_bytes": sum(size(m) for m in intermediate),
        "final_bytes": size(final),
        "comm_bytes": sum(size(m) for m in msgs if m["msg_type"].startswith("comm_")),
        "busiest_second": busiest_second(shown),
    }
    print(
        f"\n[iopub] {label}: {numbers['answer_chars']} chars ({numbers['answer_bytes']} B as JSON), "
        f"{numbers['messages']} display messages "
        f"({numbers['intermediate']} intermediate) in {numbers['streaming_s']:.2f} s; "
        f"intermediate {numbers['intermediate_bytes']} B, final {numbers['final_bytes']} B; "
        f"metadata comm {numbers['comm_bytes']} B; at most {numbers['busiest_second']} in any second"
    )
    return numbers


def check_final(final: Msg, answer: str, prompt: str, *, partial: bool, finish: str) -> dict[str, Any]:
    """The last update: the full Markdown bundle with the turn's metadata, not the answer again."""
    assert final["msg_type"] == "update_display_data"
    data, metadata = final["content"]["data"], final["content"]["metadata"]
    assert set(data) == {"text/markdown", "text/plain"}
    assert data["text/plain"] == answer
    record = metadata["jupyter_llmchat"]
    assert record["provider"]["model"] == "test-model" and record["model"] == "test-model"
    assert (record["partial"], record["finish_reason"]) == (partial, finish)
    assert set(record["tokens"]) == {"input", "output", "cached"}
    assert record["prompt"] == prompt
    dumped = json.dumps(metadata)
    for i in range(0, max(1, len(answer) - 200), max(200, len(answer) // 50)):
        assert answer[i : i + 200] not in dumped  # the answer is not sent twice
    return record


# -- throughput and bytes -----------------------------------------------------------------------


@pytest.mark.parametrize("n_chars", [2_000, 20_000, 100_000])
def test_fast_stream_bytes_and_rate(kc: Any, server: FakeOpenAIProcess, n_chars: int) -> None:
    answer = big_text(n_chars)
    server.script(Reply(text=answer, chunk_chars=8, delay=0))
    prompt = f"Write {n_chars} characters.\n"
    reply, msgs = execute(kc, "%%chat\n" + prompt)
    assert reply["content"]["status"] == "ok"
    n = measure(f"fast {n_chars}", msgs, answer)
    shown = answer_displays(msgs)

    assert n["messages"] <= RATE_HZ * n["streaming_s"] + 2
    assert n["busiest_second"] <= RATE_HZ
    # "The answer" counted as the bytes it takes on the wire: JSON escapes its ~4% newlines,
    # which alone puts two raw copies of 100k characters 8.3 kB over 2 * 100_000 + 8192.
    assert n["final_bytes"] <= 2 * n["answer_bytes"] + 8192
    assert n["final_bytes"] - 2 * n["answer_bytes"] < 2048  # the record: small, not a 3rd copy
    assert n["intermediate_bytes"] <= n["answer_bytes"] + 65536
    check_final(shown[-1], answer, prompt, partial=False, finish="stop")
    # Plain Markdown comes through as it is (a fence the cut left open is closed).
    assert shown[-1]["content"]["data"]["text/markdown"] == safe_markdown(answer)
    check_no_stdout_answer(msgs, answer)
    assert not [m for m in msgs if m["msg_type"] == "error"]


def test_slow_stream_updates_progressively(kc: Any, server: FakeOpenAIProcess) -> None:
    answer = big_text(3_000)
    server.script(Reply(text=answer, chunk_chars=30, delay=0.1))  # 100 chunks over ~10 s
    prompt = "Take your time.\n"
    reply, msgs = execute(kc, "%%chat\n" + prompt)
    assert reply["content"]["status"] == "ok"
    n = measure("slow 3000 over ~10 s", msgs, answer)
    shown = answer_displays(msgs)

    assert n["streaming_s"] >= 8
    assert n["messages"] <= RATE_HZ * n["streaming_s"] + 2
    assert n["busiest_second"] <= RATE_HZ
    assert n["intermediate"] >= 5
    # The updates grow: each shows more of the answer than the one before, with a cursor.
    texts = [m["content"]["data"]["text/markdown"] for m in shown[:-1]]
    assert all(t.endswith(" ▍") for t in texts)
    lengths = [len(t) for t in texts]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0]
    # Each shows a prefix of the answer (a fence still open there is closed after it).
    assert all(answer.startswith(re.sub(r"\n?(`{3,}|~{3,})$", "", t.removesuffix(" ▍"))) for t in texts)
    check_final(shown[-1], answer, prompt, partial=False, finish="stop")
    check_no_stdout_answer(msgs, answer)


# -- interrupts and errors ---------------------------------------------------------------------


def test_interrupt_keeps_a_partial_turn(kernel: tuple[Any, Any], kc: Any, server: FakeOpenAIProcess) -> None:
    km, _ = kernel
    answer = big_text(3_000)
    server.script(Reply(text=answer, chunk_chars=30, delay=0.1), Reply(text="Carrying on."))
    updates = 0

    def interrupt_after_a_few_updates(msg: Msg) -> None:
        nonlocal updates
        if msg["msg_type"] == "update_display_data":
            updates += 1
            if updates == 4:
                km.interrupt_kernel()

    reply, msgs = execute(kc, "%%chat\nTell me a long story.\n", on_iopub=interrupt_after_a_few_updates)
    assert reply["content"]["status"] == "error"
    # An ordinary stop shows as one line (IPython's no-traceback UsageError), not a traceback.
    assert reply["content"]["ename"] == "UsageError" and "Ctrl-C" in reply["content"]["evalue"]
    assert not [m for m in msgs if m["msg_type"] == "error"]  # no traceback output
    measure("interrupted slow stream", msgs, answer)
    shown = answer_displays(msgs)
    final = shown[-1]
    shown_text = final["content"]["data"]["text/plain"]
    assert 0 < len(shown_text) < len(answer) and answer.startswith(shown_text)
    assert "interrupted" in final["content"]["data"]["text/markdown"]
    record = check_final(final, shown_text, "Tell me a long story.\n", partial=True, finish="interrupted")
    assert record["recorded"] is True
    check_no_stdout_answer(msgs, answer)

    _, msgs = execute(kc, "%chat_history")
    history = displays(msgs) or [m for m in msgs if m["msg_type"] == "execute_result"]
    assert any("(partial)" in m["content"]["data"].get("text/markdown", "") for m in history), history
    _, msgs = execute(
        kc,
        "import jupyter_llmchat as j\n"
        "t = j.session().get_turns()[-1]\n"
        "print(t.partial, len(t.text), j.session().busy)",
    )
    assert stdout(msgs).split() == ["True", str(len(shown_text)), "False"]

    reply, msgs = execute(kc, "%%chat\nGo on.\n")
    assert reply["content"]["status"] == "ok"
    assert answer_displays(msgs)[-1]["content"]["data"]["text/plain"] == "Carrying on."
    sent = server.last_body()["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "Tell me a long story.\n"),
        ("assistant", shown_text),
        ("user", "Go on.\n"),
    ]


def test_interrupt_before_the_first_token_shows_no_older_turn(
    kernel: tuple[Any, Any], kc: Any, server: FakeOpenAIProcess
) -> None:
    km, _ = kernel
    server.script(Reply(text="An earlier answer."), Reply(text="never sent", hang=3), Reply(text="ok"))
    execute(kc, "%%chat\nAn earlier question.\n")

    def interrupt_soon(msg: Msg) -> None:
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy":
            time.sleep(0.7)  # the kernel is now waiting for the response's headers
            km.interrupt_kernel()

    reply, msgs = execute(kc, "%%chat\nA question that hangs.\n", on_iopub=interrupt_soon)
    assert reply["content"]["status"] == "error"
    for m in displays(msgs):
        # Nothing arrived, so no turn: the display must not carry the earlier exchange's record.
        assert "An earlier" not in json.dumps(m["content"])
        assert "jupyter_llmchat" not in m["content"]["metadata"]
    assert any("interrupted" in m["content"]["data"].get("text/markdown", "") for m in displays(msgs))
    _, msgs = execute(kc, "import jupyter_llmchat as j; print(len(j.session().get_turns()))")
    assert stdout(msgs).strip() == "2"
    reply, _ = execute(kc, "%chat next")
    assert reply["content"]["status"] == "ok"
    assert len(server.last_body()["messages"]) == 3


def test_stream_broken_midway_shows_red_error_and_keeps_the_partial(
    kc: Any, server: FakeOpenAIProcess
) -> None:
    answer = big_text(2_000)
    server.script(Reply(text=answer, chunk_chars=8, cut_after=100))
    reply, msgs = execute(kc, "%%chat\nThis stream breaks.\n")
    assert reply["content"]["status"] == "ok"  # a short message, not a traceback
    assert not [m for m in msgs if m["msg_type"] == "error"]
    kept = answer[:800]
    shown = answer_displays(msgs)
    check_final(shown[-1], kept, "This stream breaks.\n", partial=True, finish="error")
    # One notice, not two: the red line says the answer so far is kept.
    assert "partial" not in shown[-1]["content"]["data"]["text/markdown"]
    errors = [m for m in displays(msgs) if "text/html" in m["content"]["data"]]
    assert len(errors) == 1
    html = errors[0]["content"]["data"]["text/html"]
    assert "chat error" in html and "color" in html and "marked partial" in html
    assert "Traceback" not in json.dumps([m["content"] for m in msgs])

    _, msgs = execute(kc, "import jupyter_llmchat as j; t = j.session().get_turns()[-1]; print(t.partial, t.text == %r)" % kept)
    assert stdout(msgs).split() == ["True", "True"]


def test_server_error_is_one_red_line(kc: Any, server: FakeOpenAIProcess) -> None:
    server.script(*[Reply(status=500, headers={"Retry-After": "0"})] * 3)
    reply, msgs = execute(kc, "%%chat\nFail, please.\n")
    assert reply["content"]["status"] == "ok"
    shown = displays(msgs)
    assert len(shown) == 1 and shown[0]["msg_type"] == "display_data"
    data = shown[0]["content"]["data"]
    assert "chat error" in data["text/html"] and "500" in data["text/plain"]
    assert len(data["text/plain"].splitlines()) == 1
    assert not [m for m in msgs if m["msg_type"] in ("error", "stream", "clear_output")]
    _, msgs = execute(kc, "import jupyter_llmchat as j; print(len(j.session().get_turns()))")
    assert stdout(msgs).strip() == "0"


def test_display_rate_setting_is_honoured(kc: Any, server: FakeOpenAIProcess) -> None:
    answer = big_text(1_000)
    server.script(Reply(text=answer, chunk_chars=20, delay=0.05))  # 50 chunks over ~2.5 s
    execute(kc, "%config ChatMagics.display_rate_hz = 2")
    try:
        reply, msgs = execute(kc, "%%chat\nSlowly.\n")
    finally:
        execute(kc, f"%config ChatMagics.display_rate_hz = {RATE_HZ}")
    assert reply["content"]["status"] == "ok"
    n = measure("1000 over ~2.5 s at 2 Hz", msgs, answer)
    assert n["streaming_s"] >= 2
    assert 3 <= n["messages"] <= 2 * n["streaming_s"] + 2
    shown = answer_displays(msgs)
    gaps = [seconds(a, b) for a, b in zip(shown, shown[1:-1])]
    assert min(gaps) >= 0.45  # 1 / 2 Hz, give or take the kernel's clock


def test_reports_have_html_and_text_and_no_secret(kc: Any, server: FakeOpenAIProcess) -> None:
    secret = "sk-test-SECRET123456"
    execute(
        kc,
        f"%config ChatMagics.api_headers = {{'Authorization': 'Bearer {secret}'}}\n"
        f"%config ChatMagics.api_args = {{'api_key': {secret!r}}}\n",
    )
    try:
        execute(kc, "%chat_reset --all")  # rebuilt with the new settings
        execute(kc, "%chat hello")
        assert server.requests[-1].headers["authorization"] == f"Bearer {secret}"
        outputs = []
        for magic in ("%chat_usage --turns", "%chat_config", "%chat_history"):
            reply, msgs = execute(kc, magic)
            assert reply["content"]["status"] == "ok", magic
            results = [m for m in msgs if m["msg_type"] == "execute_result"]
            assert len(results) == 1, magic
            outputs.append(results[0]["content"]["data"])
            assert secret not in json.dumps([m["content"] for m in msgs]), magic
        usage, config, history = outputs
        assert set(usage) == {"text/plain", "text/html"} and set(config) == {"text/plain", "text/html"}
        assert "<table>" in usage["text/html"] and "test-model" in usage["text/plain"]
        assert "***" in config["text/plain"] and "***" in config["text/html"]
        assert "hello" in history["text/markdown"]
    finally:
        execute(kc, "%config ChatMagics.api_headers = {}\n%config ChatMagics.api_args = {}\n")


def test_a_cell_run_again_replaces_its_exchange(kc: Any, server: FakeOpenAIProcess) -> None:
    """Re-running cells (or Run All after a restore) does not grow a copy of the history."""
    for cell in ("cell-a", "cell-b", "cell-a", "cell-b"):
        reply, _ = execute(kc, f"%%chat\nquestion from {cell}", cell_id=cell)
        assert reply["content"]["status"] == "ok"
    sent = [m["content"] for m in server.last_body()["messages"]]
    assert sent == ["question from cell-a\n", "Hello from the fake server.", "question from cell-b\n"]
    reply, msgs = execute(kc, "import jupyter_llmchat as j; print([t.meta.get('cell_id') for t in j.session().get_turns()])")
    assert stdout(msgs).strip() == str(["cell-a", "cell-a", "cell-b", "cell-b"])


# -- trust: what users see (issue "Trust") --------------------------------------------------------


def test_two_chat_lines_in_one_cell_keep_both_and_a_rerun_replaces_both(
    kc: Any, server: FakeOpenAIProcess
) -> None:
    code = "%chat first question\n%chat second question"
    for _ in range(2):  # the second run replaces the first run's two exchanges
        reply, _ = execute(kc, code, cell_id="two-lines")
        assert reply["content"]["status"] == "ok"
        sent = [(m["role"], m["content"]) for m in server.last_body()["messages"]]
        assert sent == [("user", "first question"), ("assistant", "Hello from the fake server."),
                        ("user", "second question")]
    reply, msgs = execute(
        kc, "import jupyter_llmchat as j; print([(t.role, t.text, t.meta.get('cell_id')) for t in j.session().get_turns()])"
    )
    answer = "Hello from the fake server."
    assert stdout(msgs).strip() == str([
        ("user", "first question", "two-lines"), ("assistant", answer, "two-lines"),
        ("user", "second question", "two-lines"), ("assistant", answer, "two-lines"),
    ])


def test_chat_panel_before_hello_is_the_widget_with_a_text_fallback(
    kc: Any, server: FakeOpenAIProcess
) -> None:
    """Under Run All the front end's hello has not arrived yet: the front end decides."""
    reply, msgs = execute(kc, "%chat_panel")
    assert reply["content"]["status"] == "ok"
    shown = [m["content"]["data"] for m in msgs if m["msg_type"] in ("execute_result", "display_data")]
    assert len(shown) == 1
    assert "application/vnd.jupyter.widget-view+json" in shown[0]
    assert shown[0]["text/plain"].startswith("The chat panel needs the jupyter_llmchat extension")


def test_hostile_answer_is_published_as_safe_markdown(kc: Any, server: FakeOpenAIProcess) -> None:
    answer = ('<img src=x onerror="window.pwned=1"> ![t](http://127.0.0.1:9/track?q=secret) '
              '[go](javascript:alert(1)) `<b>`')
    server.script(Reply(text=answer, reasoning="<script>window.pwned=2</script>"))
    reply, msgs = execute(kc, "%%chat\nhi")
    assert reply["content"]["status"] == "ok"
    for msg in answer_displays(msgs):
        md = msg["content"]["data"].get("text/markdown", "")
        assert "<img" not in md and "<script" not in md and "javascript:" not in md
        assert "![" not in md.replace("\\![", "")
    final = answer_displays(msgs)[-1]["content"]["data"]
    assert final["text/plain"] == answer  # the answer itself is kept as it came
    assert "(http://127.0.0.1:9/track?q=secret)" in final["text/markdown"]
    assert "<details><summary>Thinking</summary>" in final["text/markdown"]
    assert "`<b>`" in final["text/markdown"]


class _PausingServer:
    """Streams two pieces at once, then waits for ``release`` before finishing the answer."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

                def event(delta: dict[str, Any], finish: str | None = None) -> None:
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0,
                             "model": "test-model",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()

                event({"role": "assistant", "content": "first-part "})
                event({"content": "second-part"})
                release.wait(15)
                event({}, "stop")
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_display_catches_up_when_the_stream_pauses(kc: Any, server: FakeOpenAIProcess) -> None:
    pausing = _PausingServer()
    seen_while_paused: list[str] = []

    def on_iopub(msg: Msg) -> None:
        data = msg["content"].get("data") or {}
        md = data.get("text/markdown", "")
        if msg["msg_type"] in DISPLAY and "second-part" in md and not pausing.release.is_set():
            seen_while_paused.append(md)
            pausing.release.set()

    try:
        execute(kc, f"%config ChatMagics.base_url = {pausing.base_url!r}")
        reply, msgs = execute(kc, "%%chat -s pausing\nhi", on_iopub=on_iopub)
        assert reply["content"]["status"] == "ok"
    finally:
        execute(kc, f"%config ChatMagics.base_url = {server.base_url!r}")
        pausing.close()
    # The piece that came right after an update showed before the stream went on.
    assert seen_while_paused and seen_while_paused[0].endswith("second-part ▍")
    assert answer_displays(msgs)[-1]["content"]["data"]["text/plain"] == "first-part second-part"


def test_tool_calls_show_as_lines_within_the_rate(kc: Any, server: FakeOpenAIProcess) -> None:
    """Three calls in one answer, then a slow answer: each call gets its line as it happens,
    updates keep display_rate_hz, and what the tool and the model wrote stays text."""
    calls = [{"id": f"c{i}", "type": "function",
              "function": {"name": "lookup", "arguments": json.dumps({"q": f"<script>x{i}</script>"})}}
             for i in range(3)]
    answer = big_text(1_500)
    server.script(
        Reply(text="", tool_calls=calls, finish_reason="tool_calls", tool_args_chars=4, delay=0.02),
        Reply(text=answer, chunk_chars=30, delay=0.05),
    )
    reply, _ = execute(
        kc,
        "import jupyter_llmchat, time\n"
        "def lookup(q: str) -> str:\n"
        "    'Look q up.'\n"
        "    time.sleep(0.3)\n"
        "    return '<img src=x onerror=alert(1)> found'\n"
        "jupyter_llmchat.session().register_tool(lookup)\n",
    )
    assert reply["content"]["status"] == "ok", reply["content"]
    try:
        reply, msgs = execute(kc, "%%chat\nLook three things up.\n")
    finally:
        execute(kc, "jupyter_llmchat.session().set_tools([])")
    assert reply["content"]["status"] == "ok"
    n = measure("three tool calls, then 1500 chars", msgs, answer)
    shown = answer_displays(msgs)
    assert n["messages"] <= RATE_HZ * n["streaming_s"] + 2
    assert n["busiest_second"] <= RATE_HZ
    mds = [m["content"]["data"].get("text/markdown", "") for m in shown]
    # The calls appear while they run (a "running" line), before the answer's text.
    assert any("running" in md and "<code>lookup</code>" in md for md in mds[:-1])
    final = shown[-1]["content"]
    assert final["data"]["text/plain"] == answer
    md = final["data"]["text/markdown"]
    assert md.count("<code>lookup</code>") == 3 and md.count(" — ok · ") == 3
    for text in mds:
        # Model and tool text is HTML only inside code fences (shown as text), else escaped.
        outside = re.sub(r"(?ms)^(`{3,})[^\n]*\n.*?^\1[ \t]*$", "", text)
        assert "<img" not in outside and "<script" not in outside, outside
    assert "&lt;script&gt;x0&lt;/script&gt;" in md
    rounds = final["metadata"]["jupyter_llmchat"]["rounds"]
    assert [t["role"] for t in rounds] == ["assistant", "user"]
    assert [c["value"] for c in rounds[1]["contents"]] == ["<img src=x onerror=alert(1)> found"] * 3
