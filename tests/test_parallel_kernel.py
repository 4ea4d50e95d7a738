"""parallel_chat_text in a real kernel: one progress line at a bounded rate, and the notebook's
interrupt (a real SIGINT) keeps the answers that finished."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from jupyter_llmchat._core._parallel import PROGRESS_HZ
from tests.fake_openai import FakeOpenAIProcess, Reply
from tests.test_kernel_iopub import Msg, busiest_second, displays, execute, start_kernel, stdout

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def kernel(server: FakeOpenAIProcess) -> Iterator[tuple[Any, Any]]:
    yield from start_kernel(
        "import jupyter_llmchat as j\n"
        f"chat = j.chat_openai_compatible({server.base_url!r}, model='test-model')\n"
    )


def progress_messages(msgs: list[Msg]) -> list[Msg]:
    shown = displays(msgs)
    assert shown and shown[0]["msg_type"] == "display_data"
    display_id = shown[0]["content"]["transient"]["display_id"]
    assert all(m["content"]["transient"]["display_id"] == display_id for m in shown)  # one line
    return shown


def test_one_progress_line_at_a_bounded_rate(kernel: tuple[Any, Any], server: FakeOpenAIProcess) -> None:
    _, kc = kernel
    server.reset()
    server.configure(default_reply=Reply(text="ok", hang=0.02))
    reply, msgs = execute(
        kc,
        "answers = j.parallel_chat_text(chat, [f'q{i}' for i in range(40)], max_active=1, rpm=60000)\n"
        "print(len(answers), answers.count('ok'))",
    )
    assert reply["content"]["status"] == "ok", reply["content"]
    assert stdout(msgs).split() == ["40", "40"]
    shown = progress_messages(msgs)
    assert shown[-1]["content"]["data"]["text/plain"].startswith("parallel_chat_text: 40/40 done")
    # Forty answers arrive faster than the line may change; the last update may come at once.
    assert len(shown) >= 2
    assert busiest_second(shown) <= PROGRESS_HZ + 1


def test_interrupt_keeps_what_finished(kernel: tuple[Any, Any], server: FakeOpenAIProcess) -> None:
    km, kc = kernel
    server.reset()
    # Starts are 0.1 s apart (rpm=600), so the requests reach the server in prompt order: the
    # first two get the quick replies, the other two wait on the server.
    server.script(Reply(text="one"), Reply(text="two"))
    server.configure(default_reply=Reply(text="never", hang=5))
    pressed = False

    def interrupt_once_two_are_done(msg: Msg) -> None:
        nonlocal pressed
        if msg["msg_type"] == "update_display_data" and not pressed:
            if "2/4 done" in msg["content"]["data"]["text/plain"]:
                pressed = True
                km.interrupt_kernel()

    reply, msgs = execute(
        kc,
        "answers = j.parallel_chat_text(chat, ['a', 'b', 'c', 'd'], max_active=4, rpm=600)",
        on_iopub=interrupt_once_two_are_done,
    )
    assert pressed
    assert reply["content"]["status"] == "ok", reply["content"]  # returned, not raised
    errors = "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")
    assert "interrupted; kept 2 of 4 results" in errors
    _, msgs = execute(kc, "print(list(answers), answers.interrupted)")
    assert stdout(msgs).strip() == "['one', 'two', None, None] True"
