"""A warm MCP tool call over stdio against calling the same function in-process (DESIGN §8:
<= 20 ms over).

The server is tests/mcp_servers.py (the SDK's own ``MCPServer``), started once through the
launcher as ``register_mcp_tools_stdio`` does; its ``add`` tool is called N times after a
warm-up. Rows:

- in-process: ``Tool.invoke`` of a registered Python ``add`` (the loop's own cost of a call);
- MCP, sync: ``Tool.invoke`` of the MCP tool (``chat.chat()``'s path: the call waits on the
  MCP event loop's thread);
- MCP, async: ``await Tool.ainvoke`` (``chat_async()``'s path: a worker thread, as any sync tool);
- bare SDK: ``ClientSession.call_tool`` awaited on the SDK's own loop, no launcher, no
  jupyter_llmchat (what the protocol and the server cost by themselves).

Only prints numbers; exits non-zero only if it crashes.
Run from the repository:  .venv/bin/python benchmarks/bench_mcp.py [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jupyter_llmchat import ContentToolRequest, Tool, chat_openai_compatible  # noqa: E402

SERVER = str(ROOT / "tests" / "mcp_servers.py")
REQUEST = ContentToolRequest("c", "add", {"a": 2, "b": 3})


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def timed(fn: Callable[[], object], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


async def atimed(fn: Callable[[], object], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        await fn()  # type: ignore[misc]
        out.append(time.perf_counter() - start)
    return out


async def bare_sdk(calls: int) -> list[float]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(command=sys.executable, args=[SERVER])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        for _ in range(20):
            await session.call_tool("add", {"a": 2, "b": 3})
        return await atimed(lambda: session.call_tool("add", {"a": 2, "b": 3}), calls)


def row(name: str, times: list[float], base: float | None) -> str:
    med = statistics.median(times) * 1e3
    p95 = sorted(times)[int(len(times) * 0.95)] * 1e3
    over = "" if base is None else f"{med - base:+.2f} ms"
    return f"| {name} | {med:.3f} ms | {p95:.3f} ms | {over} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    local = Tool.from_func(add)
    chat = chat_openai_compatible(base_url="http://127.0.0.1:9/v1", model="bench")
    start = time.perf_counter()
    tools = {t.name: t for t in chat.register_mcp_tools_stdio(sys.executable, [SERVER],
                                                               name="bench")}
    started = time.perf_counter() - start
    remote = tools["add"]
    assert remote.invoke(REQUEST).value == "5" and local.invoke(REQUEST).value == 5
    timed(lambda: remote.invoke(REQUEST), 20)
    in_process = timed(lambda: local.invoke(REQUEST), args.calls)
    sync = timed(lambda: remote.invoke(REQUEST), args.calls)
    asyn = asyncio.run(atimed(lambda: remote.ainvoke(REQUEST), args.calls))
    chat.cleanup_mcp_tools()
    bare = asyncio.run(bare_sdk(args.calls))
    base = statistics.median(in_process) * 1e3
    print(f"server start (first register_mcp_tools_stdio, SDK import included): {started:.2f} s")
    print(f"{args.calls} calls each, after 20 warm-up calls\n")
    print("| call of `add(2, 3)` | median | p95 | over in-process |")
    print("|---|---:|---:|---:|")
    print(row("in-process `Tool.invoke`", in_process, None))
    print(row("MCP stdio, sync `Tool.invoke`", sync, base))
    print(row("MCP stdio, async `await Tool.ainvoke`", asyn, base))
    print(row("bare SDK `call_tool` (no launcher, no jupyter_llmchat)", bare, base))


if __name__ == "__main__":
    main()
