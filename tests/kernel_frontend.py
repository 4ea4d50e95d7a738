"""A real ipykernel and, on its channels, what the labextension's bridge (bridge.ts) does.

``FrontEnd`` answers the kernel's ``jupyter_llmchat`` comm with ``hello`` and applies the
kernel's ``set_metadata``, ``append_turns`` and ``replace_exchange`` to its own copy of the
record exactly as bridge.ts does (an update that does not follow its record is answered with
``resync``), keeps the kernel's last ``stale`` cells, and sends the notebook's ``order``. Several
front ends may share one kernel's IOPub stream, as two notebooks on one kernel do.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = "jupyter_llmchat"

Msg = dict[str, Any]


class FrontEnd:
    def __init__(self, path: str, record: Any = None, *, hello: bool = True) -> None:
        self.path = path
        self.record = copy.deepcopy(record)
        self.kc: Any = None
        self.comm_id: str | None = None
        #: Send hello as soon as the comm opens (False: later, with ``say_hello``).
        self.hello_at_open = hello
        self.hello_path: str | None = None
        #: Every kernel message on the comm, with its size on the wire (its content's JSON).
        self.received: list[tuple[dict[str, Any], int]] = []
        self.ignored = 0
        #: The cells the kernel last said are stale (the badge bridge.ts shows).
        self.stale: list[str] = []

    def on_iopub(self, msg: Msg) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "comm_open" and content.get("target_name") == TARGET:
            self.comm_id = content["comm_id"]
            self.hello_path = None
            if self.hello_at_open:
                self.say_hello()
        elif kind == "comm_msg" and content.get("comm_id") == self.comm_id:
            data = content["data"]
            if self.hello_path is None or data.get("path") != self.hello_path:
                self.ignored += 1
                return
            self.received.append((data, len(json.dumps(content))))
            self.apply(data)

    def say_hello(self, record: Any = "mine") -> None:
        self.hello_path = self.path
        self.send({"type": "hello", "path": self.path, "saved": True,
                   "record": self.record if record == "mine" else record})

    def rename(self, path: str) -> None:
        """The notebook was renamed while open: tell the kernel, as bridge.ts does."""
        self.send({"type": "path", "path": path, "from": self.hello_path})
        self.path = self.hello_path = path

    def order(self, cells: list[str]) -> None:
        """The notebook's cells moved (or were added, deleted): tell the kernel, as bridge.ts
        does."""
        self.send({"type": "order", "path": self.hello_path, "cells": cells})

    def send(self, data: dict[str, Any]) -> None:
        assert self.kc is not None and self.comm_id is not None
        self.kc.shell_channel.send(self.kc.session.msg("comm_msg", {"comm_id": self.comm_id, "data": data}))

    def apply(self, data: dict[str, Any]) -> None:
        if data["type"] == "set_metadata":
            self.record = copy.deepcopy(data["value"])
        elif data["type"] == "append_turns":
            sessions = (self.record or {}).get("sessions", {})
            session = sessions.get(data["session"])
            turns = [] if session is None else session["turns"]
            if self.record is None or len(turns) != data["from"]:
                self.send({"type": "resync", "path": self.hello_path})
                return
            sessions[data["session"]] = {
                **(session or {}), "provider": data["provider"],
                "system_prompt": data["system_prompt"], "turns": turns + data["turns"],
            }
            self.record["sessions"] = sessions
            self.record["usage"] = data["usage"]
        elif data["type"] == "replace_exchange":
            sessions = (self.record or {}).get("sessions", {})
            session = sessions.get(data["session"])
            turns = [] if session is None else session["turns"]
            if self.record is None or len(turns) != data["length"]:
                self.send({"type": "resync", "path": self.hello_path})
                return
            turns = turns[:data["start"]] + data["turns"] + turns[data["end"]:]
            sessions[data["session"]] = {
                **(session or {}), "provider": data["provider"],
                "system_prompt": data["system_prompt"], "turns": turns,
            }
            self.record["sessions"] = sessions
            self.record["usage"] = data["usage"]
        elif data["type"] == "stale":
            self.stale = list(data["cells"])

    def kinds(self) -> list[str]:
        return [d["type"] for d, _ in self.received]


class Kernel:
    """One ipykernel from this checkout, its client, and the front ends that listen to it."""

    def __init__(self, notebook: Path | None, *, env: dict[str, str] | None = None) -> None:
        from jupyter_client.manager import start_new_kernel

        kernel_env = {k: v for k, v in os.environ.items()
                      if not k.startswith("OPENAI_") and k != "JPY_SESSION_NAME"}
        kernel_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), kernel_env.get("PYTHONPATH")]))
        kernel_env["NO_PROXY"] = kernel_env["no_proxy"] = "127.0.0.1,localhost"
        if notebook is not None:
            # What jupyter_server sets: the notebook's absolute path (ipykernel makes it __session__).
            kernel_env["JPY_SESSION_NAME"] = str(notebook)
        kernel_env.update(env or {})
        cwd = str(notebook.parent) if notebook is not None else str(ROOT)
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=kernel_env, cwd=cwd, startup_timeout=60)
        self.front_ends: list[FrontEnd] = []
        #: stdout/stderr printed outside any cell (while handling a front end's comm message).
        self.comm_output = ""

    def attach(self, fe: FrontEnd) -> FrontEnd:
        fe.kc = self.kc
        self.front_ends.append(fe)
        return fe

    def execute(self, code: str, *, timeout: float = 60, cell: str | None = None,
                deleted: list[str] | None = None, metadata: dict[str, Any] | None = None,
                ) -> tuple[Msg, list[Msg]]:
        """Run ``code``; feed every IOPub message to the front ends; return the reply and the
        messages of this request (up to idle). ``cell`` and ``deleted`` go into the request's
        metadata as JupyterLab puts them (``cellId``, ``deletedCells``); ``metadata={}`` sends
        none, as nbclient and VS Code do."""
        # As JupyterLab's notebook actions do, the request's metadata carries `deletedCells`:
        # the kernel opens its comm only for a front end that speaks it (DESIGN §7).
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        if metadata is None:
            metadata = {"deletedCells": list(deleted or []), "recordTiming": False}
            if cell is not None:
                metadata["cellId"] = cell
        request = self.kc.session.msg("execute_request", content, metadata=metadata)
        self.kc.shell_channel.send(request)
        msg_id = request["header"]["msg_id"]
        mine: list[Msg] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no idle within {timeout} s for {code!r}") from None
            for fe in self.front_ends:
                fe.on_iopub(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                if msg["msg_type"] == "stream" and msg["parent_header"].get("msg_type") == "comm_msg":
                    self.comm_output += msg["content"]["text"]
                continue
            mine.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        while True:
            reply = self.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply, mine

    def ok(self, code: str, **kwargs: Any) -> str:
        """Run ``code``, which must succeed; its stdout and stderr."""
        reply, msgs = self.execute(code, **kwargs)
        assert reply["content"]["status"] == "ok", (code, reply["content"])
        return "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")

    def value(self, expr: str) -> Any:
        """The JSON value of ``expr`` in the kernel."""
        out = self.ok(f"import json as _j; print('@@' + _j.dumps({expr}))")
        return json.loads(out.split("@@", 1)[1])

    def sync(self) -> None:
        """Let the kernel handle what the front ends sent (comm messages go before this cell)."""
        self.ok("pass")

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@contextmanager
def kernel(notebook: Path | None, **kwargs: Any) -> Iterator[Kernel]:
    k = Kernel(notebook, **kwargs)
    try:
        yield k
    finally:
        k.close()


def notebook_file(path: Path, record: Any = None) -> Path:
    metadata: dict[str, Any] = {"kernelspec": {"name": "python3", "display_name": "Python 3"}}
    if record is not None:
        metadata["jupyter_llmchat"] = record
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": metadata, "cells": []}),
                    encoding="utf-8")
    return path


def record_texts(record: dict[str, Any], session: str = "default") -> list[str]:
    """The text of each turn of ``session`` in a notebook record (first content of each)."""
    return [t["contents"][0]["text"] for t in record["sessions"][session]["turns"]]


def load(k: Kernel, base_url: str) -> str:
    """``%load_ext`` and point the sessions at ``base_url``; what the cell printed."""
    out = k.ok("%load_ext jupyter_llmchat")
    k.ok(f"%config ChatMagics.base_url = {base_url!r}\n%config ChatMagics.model = 'test-model'")
    return out
