"""``parallel_chat_text`` against a batching server (vLLM's CPU build): the scale-out path.

DESIGN §8's target: 16 prompts at ``max_active=8`` >= 4x faster than at ``max_active=1``. vLLM
batches the requests in flight (continuous batching), so more of them at once should cost
little more than one; a client that serialised them, or a rate limit in the way, would show here.

The server is the bundled gemma-3-270m on vLLM, from ``.venv-vllm`` (``bash .ci/vllm-venv``
builds it once, ~4 min), started by ``tests/real_servers.py`` as the vLLM test tier does and
stopped at the end. Every answer runs to ``--max-tokens`` (a base model never stops by itself),
so each request is the same work. The rate limit is set out of the way (``rpm``): only
``max_active`` is measured. Levels are interleaved within each repetition; the table gives the
median wall time. Prints a markdown table, writes ``benchmarks/scale.png``. Never asserts timings.

Run:  .venv/bin/python benchmarks/bench_scale.py [--prompts 16] [--max-tokens 24] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from jupyter_llmchat import Chat, chat_vllm, parallel_chat_text, params, token_usage  # noqa: E402
from tests.real_servers import VLLM_MODEL, VLLMServer, vllm_available  # noqa: E402

#: Short, varied prompts (the first ``--prompts`` of them, cycled if more are asked).
PROMPTS = [
    "Name a colour.", "Name a fruit.", "Name a city.", "Name a river.", "Name a planet.",
    "Name a tree.", "Name a bird.", "Name a metal.", "Name a sport.", "Name a month.",
    "Name an ocean.", "Name a flower.", "Name a tool.", "Name a game.", "Name a song.",
    "Name a fish.",
]  # fmt: skip
TARGET = 4.0  # DESIGN §8: max_active=8 at least 4x faster than max_active=1


def output_tokens() -> int:
    return sum(row["output"] or 0 for row in token_usage() if row["provider"] == "vLLM")


def run_level(chat: Chat, prompts: list[str], max_active: int) -> tuple[float, int]:
    """Wall seconds and output tokens of one parallel_chat_text run."""
    before = output_tokens()
    t0 = time.perf_counter()
    answers = parallel_chat_text(chat, prompts, max_active=max_active, rpm=10**6, progress=False)
    wall = time.perf_counter() - t0
    if answers.errors or len(answers) != len(prompts):
        raise RuntimeError(f"max_active={max_active}: {len(answers.errors)} requests failed: {answers.errors}")
    return wall, output_tokens() - before


def chart(path: Path, levels: list[int], walls: dict[int, list[float]], n_prompts: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = {n: statistics.median(walls[n]) for n in levels}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.bar([str(n) for n in levels], [n_prompts / med[n] for n in levels], color="#d62728")
    left.set_xlabel("max_active")
    left.set_title(f"parallel_chat_text on vLLM (CPU), {n_prompts} prompts: prompts/s", fontsize=10)
    speedup = [med[levels[0]] / med[n] for n in levels]
    right.plot(levels, speedup, "o-", color="#d62728", label="measured")
    right.plot(levels, [n / levels[0] for n in levels], "--", color="#7f7f7f", label="ideal (linear)")
    right.axhline(TARGET, color="#2ca02c", linestyle=":", label=f"target at 8: {TARGET:.0f}x")
    right.set_xscale("log", base=2)
    right.set_xticks(levels, [str(n) for n in levels])
    right.set_xlabel("max_active")
    right.set_title(f"speed-up over max_active={levels[0]}", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--levels", default="1,2,4,8", help="max_active values, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--png", type=Path, default=HERE / "scale.png")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]

    why = vllm_available()
    if why:
        sys.exit(f"bench_scale: {why}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, VLLMServer(Path(tmp)) as server:
        print(f"vLLM ready in {server.startup_seconds:.0f} s at {server.base_url}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)  # fmt: skip
        chat = chat_vllm(base_url=server.base_url, model=VLLM_MODEL,
                         params=params(max_tokens=args.max_tokens, temperature=0))  # fmt: skip
        run_level(chat, prompts[:4], max_active=4)  # warm-up: first-request costs out of the way
        walls: dict[int, list[float]] = {n: [] for n in levels}
        tokens: dict[int, list[int]] = {n: [] for n in levels}
        loads: list[float] = []
        for rep in range(args.reps):
            # Alternate the order, so a change of the machine's load falls on every level.
            for n in levels if rep % 2 == 0 else levels[::-1]:
                wall, out = run_level(chat, prompts, n)
                walls[n].append(wall)
                tokens[n].append(out)
                loads.append(os.getloadavg()[0])
                print(f"  rep {rep + 1} max_active={n}: {wall:.2f} s, {out} output tokens", flush=True)

    base = statistics.median(walls[levels[0]])
    print(f"\n{args.prompts} prompts, max_tokens={args.max_tokens}, median of {args.reps}; "
          f"load average during the runs {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores\n")  # fmt: skip
    print("| max_active | wall (median) | range | prompts/s | output tokens/s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in levels:
        med = statistics.median(walls[n])
        tok = statistics.median(tokens[n])
        print(f"| {n} | {med:.2f} s | {min(walls[n]):.2f}-{max(walls[n]):.2f} s | "
              f"{args.prompts / med:.2f} | {tok / med:.1f} | {base / med:.2f}x |")  # fmt: skip
    if 8 in walls and levels[0] == 1:
        ratio = base / statistics.median(walls[8])
        verdict = "met" if ratio >= TARGET else "NOT met"
        print(f"\nmax_active=8 vs 1: {ratio:.2f}x (target >= {TARGET:.0f}x): {verdict}")
    try:
        chart(args.png, levels, walls, args.prompts)
        print(f"chart: {args.png}")
    except ImportError:
        print("matplotlib not importable: no chart")


if __name__ == "__main__":
    main()
