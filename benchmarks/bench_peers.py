"""This client side by side with its peers, in one run, against the same local fake server.

Peers (from the ``bench`` extra: ``pip install -e '.[bench]'``; a peer that is not importable is
skipped and said so):

- ``bare``    a plain httpx + httpx_sse loop (bench_client.py's);
- ``ours``    ``jupyter_llmchat.chat_openai_compatible(...).stream(...)``;
- ``openai``  the openai SDK, ``chat.completions.create(stream=True)``;
- ``chatlas`` posit-dev's chatlas, its OpenAI chat-completions provider, ``Chat.stream(...)``;
- ``llm``     simonw/llm with an OpenAI-compatible model from ``extra-openai-models.yaml``.

Measured:

1. client CPU per streamed chunk: bench_client.py's ``cpu_per_chunk`` (``time.process_time``
   around one whole answer of ``--chunks`` chunks, median of ``--reps``, clients interleaved);
2. import time and peak memory, in fresh interpreters (median of ``--fresh``): the wall time of
   importing the peer's package, then two streamed answers; the process's peak RSS (``VmHWM``,
   which includes this harness: bench_client.py imports httpx and the fake server's module in
   every child) and the tracemalloc peak of the second answer alone;
3. ``parallel_chat_text`` throughput against chatlas's ``parallel_chat_text`` at the same
   ``max_active``, every request held ``--hold`` seconds by the server (a model's latency); a
   bare ``httpx.AsyncClient`` + semaphore loop shows what the server allows.

Prints a markdown table and writes ``benchmarks/peers.png`` (matplotlib). Never asserts timings.

Run:  python benchmarks/bench_peers.py [--chunks 2000] [--reps 5] [--fresh 5] [--prompts 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = ("bare", "ours", "openai", "chatlas", "llm")
#: What each peer imports (timed in a fresh interpreter, before anything else is loaded).
IMPORTS = {
    "bare": "import httpx, httpx_sse",
    "ours": "import jupyter_llmchat; jupyter_llmchat.chat_openai_compatible",
    "openai": "import openai",
    "chatlas": "import chatlas",
    "llm": "import llm",
}

Runner = Callable[[], tuple[int, float]]  # bench_client's: -> (content chunks, seconds to first)


# -- the peers that bench_client.py does not have ----------------------------------------------


def chatlas_chat(base_url: str) -> Any:
    """A chatlas Chat on the chat-completions endpoint (its ChatOpenAI may use /responses)."""
    import chatlas

    model = _bc().MODEL
    for name in ("ChatOpenAICompletions", "ChatOpenAICompatible"):
        cls = getattr(chatlas, name, None)
        if cls is not None:
            return cls(base_url=base_url, model=model, api_key="not-used")
    return chatlas.ChatOpenAI(base_url=base_url, model=model, api_key="not-used")


def chatlas_runner(base_url: str) -> Runner | None:
    try:
        chat = chatlas_chat(base_url)
    except ImportError:
        return None
    prompt = _bc().PROMPT

    def run() -> tuple[int, float]:
        chat.set_turns([])  # the same one-message request every time, as the others send
        n, first, t0 = 0, 0.0, time.perf_counter()
        for piece in chat.stream(prompt):
            if piece:
                if not n:
                    first = time.perf_counter() - t0
                n += 1
        return n, first

    return run


def llm_runner(base_url: str) -> Runner | None:
    """simonw/llm, configured the documented way: an ``extra-openai-models.yaml`` in its user
    directory naming the server's ``api_base``."""
    try:
        import llm
    except ImportError:
        return None
    user_dir = Path(os.environ["LLM_USER_PATH"])
    (user_dir / "extra-openai-models.yaml").write_text(
        f"- model_id: bench-fake\n  model_name: {_bc().MODEL}\n  api_base: \"{base_url}\"\n"
    )
    model = llm.get_model("bench-fake")
    prompt = _bc().PROMPT

    def run() -> tuple[int, float]:
        n, first, t0 = 0, 0.0, time.perf_counter()
        for piece in model.prompt(prompt, stream=True, key="not-used"):
            if piece:
                if not n:
                    first = time.perf_counter() - t0
                n += 1
        return n, first

    return run


def runner_for(name: str, base_url: str) -> Runner | None:
    bc = _bc()
    if name == "bare":
        return bc.bare_runner(base_url)
    if name == "ours":
        return bc.ours_runner(base_url)
    if name == "openai":
        return bc.openai_runner(base_url)
    if name == "chatlas":
        return chatlas_runner(base_url)
    if name == "llm":
        return llm_runner(base_url)
    raise ValueError(name)


def _bc() -> Any:
    """bench_client.py, imported late: a fresh interpreter times its peer's import first."""
    sys.path.insert(0, str(HERE))
    import bench_client

    return bench_client


# -- fresh interpreters: import time and memory ------------------------------------------------


def child(name: str, base_url: str, chunks: int) -> None:
    """In a fresh interpreter: import the peer, stream one answer, print figures as JSON."""
    t0 = time.perf_counter()
    exec(IMPORTS[name], {})
    import_s = time.perf_counter() - t0
    run = runner_for(name, base_url)
    if run is None:
        print(json.dumps({"skipped": True}))
        return
    run()  # the first answer also imports what the client loads lazily: trace the second
    tracemalloc.start()
    n, _ = run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if n != chunks:
        raise RuntimeError(f"{name}: got {n} chunks, expected {chunks}")
    print(json.dumps({"import_s": import_s, "maxrss_mb": _peak_rss_kb() / 1024, "traced_peak_mb": peak / 2**20}))


def _peak_rss_kb() -> int:
    """This process's peak resident size. ``VmHWM`` starts afresh at exec; ``ru_maxrss`` of a
    forked child would start from its parent's (the benchmark's own) size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def fresh_figures(name: str, base_url: str, chunks: int, n: int) -> dict[str, float] | None:
    rows = []
    for _ in range(n):
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--base-url", base_url, "--chunks", str(chunks)],
            capture_output=True, text=True, check=True, env=_env(), cwd=ROOT,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        if row.get("skipped"):
            return None
        rows.append(row)
    med = _bc().med
    return {k: med([r[k] for r in rows]) for k in rows[0]}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# -- parallel throughput -----------------------------------------------------------------------


def parallel_ours(base_url: str, prompts: list[str], max_active: int) -> tuple[float, float]:
    import jupyter_llmchat

    chat = jupyter_llmchat.chat_openai_compatible(base_url, model=_bc().MODEL)
    w0, c0 = time.perf_counter(), time.process_time()
    out = jupyter_llmchat.parallel_chat_text(chat, prompts, max_active=max_active, rpm=10**7, progress=False)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if None in out:
        raise RuntimeError(f"ours: {len(out.errors)} requests failed: {next(iter(out.errors.values()))}")
    return wall, cpu


def parallel_bare(base_url: str, prompts: list[str], max_active: int) -> tuple[float, float]:
    """The ceiling: one httpx.AsyncClient, a semaphore, no history, no turns, no copies."""
    import httpx

    async def main() -> list[str]:
        sem = asyncio.Semaphore(max_active)
        async with httpx.AsyncClient(timeout=300) as client:

            async def one(p: str) -> str:
                async with sem:
                    body = {"model": _bc().MODEL, "messages": [{"role": "user", "content": p}]}
                    resp = await client.post(f"{base_url}/chat/completions", json=body)
                    resp.raise_for_status()
                    return str(resp.json()["choices"][0]["message"]["content"])

            return await asyncio.gather(*(one(p) for p in prompts))

    w0, c0 = time.perf_counter(), time.process_time()
    asyncio.run(main())
    return time.perf_counter() - w0, time.process_time() - c0


def parallel_chatlas(base_url: str, prompts: list[str], max_active: int) -> tuple[float, float] | None:
    try:
        import chatlas
    except ImportError:
        return None
    chat = chatlas_chat(base_url)
    w0, c0 = time.perf_counter(), time.process_time()
    out = asyncio.run(chatlas.parallel_chat_text(chat, prompts, max_active=max_active, rpm=10**7))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if len(out) != len(prompts) or not all(out):
        raise RuntimeError("chatlas: some requests failed")
    return wall, cpu


# -- report ------------------------------------------------------------------------------------


def chart(path: Path, table: dict[str, dict[str, float]], throughput: dict[str, float], max_active: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("cpu_us", "client CPU per streamed chunk (µs)", table),
        ("import_ms", "import time (ms)", table),
        ("maxrss_mb", "peak RSS after two answers (MB)", table),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title, data) in zip(axes, panels):
        names = [n for n in data if key in data[n]]
        ax.bar(names, [data[n][key] for n in names],
               color=["#d62728" if n == "ours" else "#7f7f7f" for n in names])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30)
    ax = axes[3]
    names = list(throughput)
    ax.bar(names, [throughput[n] for n in names],
           color=["#d62728" if n == "ours" else "#7f7f7f" for n in names])
    ax.set_title(f"parallel_chat_text, max_active={max_active} (prompts/s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--chunk-chars", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--fresh", type=int, default=5, help="fresh interpreters per peer")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--max-active", type=int, default=10)
    ap.add_argument("--hold", type=float, default=0.05, help="seconds the server holds each parallel request")
    ap.add_argument("--png", type=Path, default=HERE / "peers.png")
    ap.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--base-url", help=argparse.SUPPRESS)
    args = ap.parse_args()

    # llm keeps its configuration in a user directory: a private one, for this run only.
    os.environ.setdefault("LLM_USER_PATH", tempfile.mkdtemp(prefix="bench-llm-"))
    if args.child:
        child(args.child, args.base_url, args.chunks)
        return

    bc = _bc()  # sets NO_PROXY and drops OPENAI_API_KEY for the whole run
    from tests.fake_openai import Reply, big_text

    big = Reply(text=big_text(args.chunks * args.chunk_chars), chunk_chars=args.chunk_chars)
    versions = {}
    for mod in ("httpx", "openai", "chatlas", "llm"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            try:
                from importlib.metadata import version

                versions[mod] = version(mod)
            except Exception:
                versions[mod] = "not installed"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))

    table: dict[str, dict[str, float]] = {}
    throughput: dict[str, float] = {}
    with bc.FakeOpenAIProcess() as srv:
        srv.configure(default_reply=big)
        runners: dict[str, Runner] = {}
        for name in PEERS:
            run = runner_for(name, srv.base_url)
            if run is None:
                print(f"{name}: not importable, skipped (pip install -e '.[bench]')")
            else:
                runners[name] = run
        cpu = bc.cpu_per_chunk(runners, args.reps, args.chunks)
        for name, xs in cpu.items():
            table[name] = {"cpu_us": bc.med(xs) * 1e6}

        for name in runners:
            figures = fresh_figures(name, srv.base_url, args.chunks, args.fresh)
            if figures is not None:
                table[name].update(
                    import_ms=figures["import_s"] * 1e3,
                    maxrss_mb=figures["maxrss_mb"],
                    traced_mb=figures["traced_peak_mb"],
                )

        srv.configure(default_reply=Reply(text="A short answer.", hang=args.hold))
        prompts = [f"Question number {i}?" for i in range(args.prompts)]
        parallel_bare(srv.base_url, prompts[: args.max_active], args.max_active)  # warm-up
        wall, pcpu = parallel_bare(srv.base_url, prompts, args.max_active)
        throughput["bare"] = len(prompts) / wall
        par_cpu = {"bare": pcpu / len(prompts)}
        parallel_ours(srv.base_url, prompts[: args.max_active], args.max_active)  # warm-up
        wall, pcpu = parallel_ours(srv.base_url, prompts, args.max_active)
        throughput["ours"] = len(prompts) / wall
        par_cpu["ours"] = pcpu / len(prompts)
        res = parallel_chatlas(srv.base_url, prompts[: args.max_active], args.max_active)
        if res is not None:
            wall, pcpu = parallel_chatlas(srv.base_url, prompts, args.max_active) or (0.0, 0.0)
            throughput["chatlas"] = len(prompts) / wall
            par_cpu["chatlas"] = pcpu / len(prompts)

    print(f"\n### Streaming: {args.chunks} chunks of {args.chunk_chars} characters, one local fake server\n")
    print("| client | CPU per chunk | vs bare | import | peak RSS | traced peak (one answer) |")
    print("|---|---:|---:|---:|---:|---:|")
    bare = table.get("bare", {}).get("cpu_us")
    for name, row in table.items():
        ratio = f"{row['cpu_us'] / bare:.2f}x" if bare else "n/a"
        print(f"| {name} | {row['cpu_us']:.1f} µs | {ratio} | {row.get('import_ms', float('nan')):.0f} ms "
              f"| {row.get('maxrss_mb', float('nan')):.0f} MB | {row.get('traced_mb', float('nan')):.1f} MB |")
    ideal = args.max_active / args.hold
    print(f"\n### parallel_chat_text: {args.prompts} prompts, max_active={args.max_active}, "
          f"server holds each request {args.hold * 1e3:.0f} ms (ideal {ideal:.0f} prompts/s)\n")
    print("| client | prompts/s | of ideal | client CPU per prompt |")
    print("|---|---:|---:|---:|")
    for name, rate in throughput.items():
        print(f"| {name} | {rate:.1f} | {rate / ideal:.0%} | {par_cpu[name] * 1e3:.2f} ms |")

    ours = table.get("ours", {})
    ratios = []
    for peer in ("bare", "openai", "chatlas", "llm"):
        if peer in table:
            ratios.append(f"{ours['cpu_us'] / table[peer]['cpu_us']:.2f}x {peer}")
    line = "ours, CPU per chunk: " + ", ".join(ratios)
    if "chatlas" in throughput:
        line += f"; parallel throughput {throughput['ours'] / throughput['chatlas']:.2f}x chatlas"
    print(f"\n{line}")
    try:
        chart(args.png, table, throughput, args.max_active)
        print(f"chart: {args.png}")
    except ImportError:
        print("matplotlib not importable: no chart (pip install -e '.[bench]')")


if __name__ == "__main__":
    main()
