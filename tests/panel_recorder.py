"""The real ``ChatPanel`` with its messages to the front end kept (no front end in these tests;
the Chromium tests drive the same messages through the labextension)."""

from __future__ import annotations

import threading
from typing import Any

from jupyter_llmchat._jupyter._widget import ChatPanel


class RecordingPanel(ChatPanel):
    """``sent``: every message to the front end, in order. ``busy_at_end``: the ``busy`` trait
    when the question's last message ("done" or "error") was sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        self.busy_at_end: bool | None = None
        super().__init__(*args, **kwargs)

    def send(self, content: dict[str, Any], buffers: Any = None) -> None:
        with self.arrived:
            if content.get("type") in ("done", "error"):
                self.busy_at_end = self.busy
            self.sent.append(content)
            self.arrived.notify_all()

    def front_end(self, **content: Any) -> None:
        """A message from the front end, as the comm delivers it."""
        self._on_front_end(self, content, None)

    def wait_for(self, kind: str, timeout: float = 30) -> dict[str, Any]:
        with self.arrived:
            ok = self.arrived.wait_for(lambda: any(m["type"] == kind for m in self.sent), timeout)
        assert ok, f"no {kind!r} message: {[m['type'] for m in self.sent]}"
        return next(m for m in self.sent if m["type"] == kind)

    def finish(self, timeout: float = 30) -> None:
        """Wait for the question's end (done or error) and the thread to let go."""
        with self.arrived:
            ended = self.arrived.wait_for(lambda: any(m["type"] in ("done", "error") for m in self.sent), timeout)
        assert ended, f"the panel never finished: {[m['type'] for m in self.sent]}"
        if self._thread is not None:
            self._thread.join(timeout)
