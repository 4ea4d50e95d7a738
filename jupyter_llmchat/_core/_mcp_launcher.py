"""Runs one MCP stdio server so that it, and every process it starts, ends with the kernel.

The SDK starts a stdio server in a session of its own (``start_new_session``), so when the
kernel is killed (SIGKILL, the OOM killer) nothing signals the server: a well-behaved one exits
when its stdin closes, but a busy or hung one, or its children, live on. The SDK starts this
launcher instead, as ``python _mcp_launcher.py PARENT_PID -- COMMAND ARGS...``: it leads that
new session's process group, runs the server in it with the same stdin and stdout, and when
its parent is gone, or the server has ended, ends the whole group (SIGTERM, then SIGKILL
after a grace period).

Standard library only, and run as a file (not ``-m``): the SDK gives a server a minimal
environment, without the kernel's ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

#: How often the parent is looked at, and how long the group has between SIGTERM and SIGKILL.
POLL_S = 0.2
GRACE_S = 2.0


def _end_group(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group (this process ignores it), then SIGKILL to whatever is left."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    group = os.getpgrp()
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    if child.poll() is not None:
        time.sleep(POLL_S)  # the server is gone already: a moment for the rest to end cleanly
    else:
        try:
            child.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    os.killpg(group, signal.SIGKILL)  # this launcher goes too


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: _mcp_launcher.py PARENT_PID -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    parent = int(argv[0])
    try:
        child = subprocess.Popen(argv[2:])  # inherits stdin, stdout and stderr: the SDK's pipes
    except OSError as exc:
        print(f"jupyter_llmchat: cannot start the MCP server {argv[2]!r}: {exc}", file=sys.stderr)
        return 127
    # The SDK ends a server with SIGTERM to its group: the child gets it too, so this one waits
    # for the child and passes its exit code on instead of dying first.
    signal.signal(signal.SIGTERM, lambda *_: None)
    while True:
        try:
            child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            if os.getppid() == parent:
                continue
        # The server ended, or the kernel is gone (re-parented): what the server started goes
        # with it. A well-behaved server exits as soon as the kernel's death closes its stdin,
        # maybe before this process sees its new parent, and its children would live on.
        _end_group(child)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
