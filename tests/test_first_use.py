"""What a first user trips on: the reporting magics, -o names, parallel progress, %chat_fix.

Magics run in the real test IPython shell against the fake server (tests/fake_openai.py).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Callable, Iterator

import pytest

from jupyter_llmchat import ParallelChatError, parallel_chat_text
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import new_chat

# -- parallel_chat's progress line ------------------------------------------------------------------


@contextlib.contextmanager
def tty_stderr() -> Iterator[Callable[[], str]]:
    """sys.stderr on a real pseudo-terminal, as in a terminal IPython; yields a reader of it.

    Entered inside the test: pytest's own capture sets sys.stderr again between phases."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w", buffering=1, encoding="utf-8")
    saved, sys.stderr = sys.stderr, stream
    chunks: list[bytes] = []

    def read() -> str:
        stream.flush()
        while select.select([master], [], [], 0)[0]:
            chunks.append(os.read(master, 65536))
        return b"".join(chunks).decode("utf-8", "replace")

    try:
        yield read
    finally:
        sys.stderr = saved
        stream.close()
        os.close(master)


def last_progress(text: str) -> str:
    return text.replace("\r\n", "\n").split("\r")[-1].strip()


def test_progress_counts_failures_apart_and_messages_count_from_one(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script_for("two", *[Reply(status=400)] * 3)
    with tty_stderr() as read:
        answers = parallel_chat_text(new_chat(fake_url), ["one", "two", "three"], max_active=1, rpm=60_000,
                                     on_error="continue")
        line = last_progress(read())
    assert answers.errors.keys() == {1}
    assert line.startswith("parallel_chat_text: 2/3 done, 1 failed")
    fake.script_for("two", *[Reply(status=400)] * 3)
    with pytest.raises(ParallelChatError, match=r"^prompt 2 of 3 failed \(errors\[1\]\)"):
        parallel_chat_text(new_chat(fake_url), ["one", "two", "three"], max_active=1, rpm=60_000,
                           on_error="stop", progress=False)


def test_progress_says_when_the_rpm_limit_holds_the_run_back(
    fake: FakeOpenAI, fake_url: str
) -> None:
    # One request at a time against an instant server, starts 0.5 s apart: every start after
    # the first waits for the limit, none for the server.
    with tty_stderr() as read:
        parallel_chat_text(new_chat(fake_url), [f"q{i}" for i in range(4)], max_active=1, rpm=120)
        line = last_progress(read())
    assert line.startswith("parallel_chat_text: 4/4 done")
    assert "held back by rpm=120 (at most 2 requests/s): pass a higher rpm=" in line


def test_progress_says_nothing_of_rpm_when_the_server_is_the_limit(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.default_reply = Reply(text="slow", hang=0.3)
    with tty_stderr() as read:
        parallel_chat_text(new_chat(fake_url), [f"q{i}" for i in range(5)], max_active=1, rpm=600)
        line = last_progress(read())
    assert line.startswith("parallel_chat_text: 5/5 done") and "rpm" not in line
