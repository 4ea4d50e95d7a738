"""Sync tools under ``parallel_chat``: DESIGN §8's "N one-second tools at ``max_active=N`` in
~1 s, not N s".

For each N of ``--prompts`` (default 6 and 10), each of N prompts gets one scripted tool call (the fake server in-process, routed by
prompt so concurrent requests each get their own answers), then a plain answer. The tool sleeps
``--seconds`` (a sync function: ``time.sleep``, as a blocking library call would). Measured: the
wall time of ``parallel_chat_text`` at ``max_active=N``; an async tool (``asyncio.sleep``) is
measured alongside as the reference. Median of ``--reps``. Never asserts timings. (10 shows
what 6 does not on a 2-core machine: asyncio's default pool has min(32, CPUs + 4) threads.)

Run:  .venv/bin/python benchmarks/bench_tools.py [--prompts 6 10] [--seconds 1] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jupyter_llmchat import chat_openai_compatible, parallel_chat_text  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply  # noqa: E402


def script(srv: FakeOpenAI, prompts: list[str]) -> None:
    for i, p in enumerate(prompts):
        call = {"id": f"c{i}", "type": "function",
                "function": {"name": "wait", "arguments": json.dumps({"n": i})}}
        srv.script_for(p, Reply(text="", tool_calls=[call], finish_reason="tool_calls"),
                       Reply(text=f"done {i}"))


def run(srv: FakeOpenAI, n: int, seconds: float, kind: str) -> float:
    chat = chat_openai_compatible(base_url=srv.base_url, model="test-model")
    if kind == "sync":
        def wait(n: int) -> str:
            """Wait, blocking."""
            time.sleep(seconds)
            return f"waited {n}"
        chat.register_tool(wait)
    else:
        async def wait(n: int) -> str:  # type: ignore[misc]
            """Wait, without blocking."""
            await asyncio.sleep(seconds)
            return f"waited {n}"
        chat.register_tool(wait)
    prompts = [f"prompt number {i} of {kind}" for i in range(n)]
    script(srv, prompts)
    t0 = time.perf_counter()
    answers = parallel_chat_text(chat, prompts, max_active=n, rpm=10**6, progress=False)
    wall = time.perf_counter() - t0
    if answers.errors or answers != [f"done {i}" for i in range(n)]:
        raise RuntimeError(f"{kind}: wrong answers {list(answers)} {answers.errors}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[6, 10])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    walls: dict[tuple[int, str], list[float]] = {}
    with FakeOpenAI() as srv:
        run(srv, 2, 0.01, "sync")  # warm-up: first imports, the price table, connections
        for _ in range(a.reps):
            for n in a.prompts:
                for kind in ("sync", "async"):
                    walls.setdefault((n, kind), []).append(run(srv, n, a.seconds, kind))
    print(f"N prompts, one {a.seconds:g} s tool call each, max_active=N, median of {a.reps}\n")
    print("| N | tool | wall (s) | x one call | target (sync <= 1.5x) |")
    print("|---|---|---|---|---|")
    for (n, kind), ws in walls.items():
        med = statistics.median(ws)
        verdict = ("met" if med <= 1.5 * a.seconds else "NOT met") if kind == "sync" else ""
        print(f"| {n} | {kind} | {med:.2f} | {med / a.seconds:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
