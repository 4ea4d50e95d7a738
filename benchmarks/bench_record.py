"""Comm bytes per finished turn as a session grows to 1,000 turns (DESIGN §8: proportional to
the turn, not to the history).

A real kernel with the extension, the fake server in a subprocess (every answer ~200
characters), and a Python front end doing what bridge.ts does (``tests/kernel_frontend.py``).
500 ``%chat`` cells make 1,000 turns. For each cell we sum ``len(json.dumps(content))`` of the
comm messages the kernel sent for it ("after": ``append_turns``). "Before" is what the previous
protocol sent for the same cell: one ``set_metadata`` carrying the whole record, whose size is
measured from the kernel's record at checkpoints.

Then moves (DESIGN §7: a change of order travels as a delta): notebook cells with ids, one
exchange each; the front end says one cell moved, and we sum the comm bytes the kernel sent
back (``replace_exchange`` of the exchanges between the turns that stayed in place), against
the whole record that a reorder sent before.

Only prints numbers; exits non-zero only if it crashes.
Run from the repository:  .venv/bin/python benchmarks/bench_record.py [--exchanges 500]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_openai import FakeOpenAIProcess  # noqa: E402
from tests.kernel_frontend import FrontEnd, kernel, load, notebook_file  # noqa: E402

RECORD = "__import__('jupyter_llmchat._jupyter._bridge')._jupyter._bridge.current_bridge().record()"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exchanges", type=int, default=500, help="exchanges (2 turns each)")
    parser.add_argument("--cells", type=int, default=200, help="cells of the moves' notebook")
    args = parser.parse_args()
    checkpoints = sorted({1, 10, 50, 100, 250, args.exchanges} & set(range(1, args.exchanges + 1)))
    rows = []
    with FakeOpenAIProcess(text="An answer of about two hundred characters. " * 5) as server, \
            tempfile.TemporaryDirectory() as tmp:
        nb = notebook_file(Path(tmp) / "bench.ipynb")
        with kernel(nb) as k:
            fe = k.attach(FrontEnd("bench.ipynb"))
            load(k, server.base_url)
            k.sync()
            for i in range(1, args.exchanges + 1):
                sent = len(fe.received)
                k.ok(f"%chat Question number {i}: what is {i} squared")
                after = sum(size for _, size in fe.received[sent:])
                kinds = {d["type"] for d, _ in fe.received[sent:]}
                if i in checkpoints:
                    record = k.value(RECORD)
                    before = len(json.dumps({"data": {"type": "set_metadata", "value": record}}))
                    rows.append((i, 2 * i, before, after, ",".join(sorted(kinds))))
            assert fe.record == k.value(RECORD), "the front end's record differs from the kernel's"
    print(f"{'exchange':>8} {'turns':>6} {'before B/cell':>14} {'after B/cell':>13}  messages")
    for i, turns, before, after, kinds in rows:
        print(f"{i:>8} {turns:>6} {before:>14,} {after:>13,}  {kinds}")
    first, last = rows[min(1, len(rows) - 1)], rows[-1]  # the first cell also creates the session
    print(f"\nafter: {last[3]:,} B at turn {last[1]} vs {first[3]:,} B at turn {first[1]} "
          f"(x{last[3] / first[3]:.2f}); before: x{last[2] / first[2]:.1f}")
    moves(args.cells)


def moves(n: int) -> None:
    """Comm bytes for a moved cell, in a notebook of ``n`` ``%%chat`` cells."""
    cells = [f"c{i}" for i in range(n)]
    with FakeOpenAIProcess(text="An answer of about two hundred characters. " * 5) as server, \
            tempfile.TemporaryDirectory() as tmp:
        nb = notebook_file(Path(tmp) / "moves.ipynb")
        with kernel(nb) as k:
            fe = k.attach(FrontEnd("moves.ipynb"))
            load(k, server.base_url)
            for i, cell in enumerate(cells):
                k.ok(f"%%chat\nQuestion number {i}: what is {i} squared", cell=cell)
            whole = len(json.dumps({"data": {"type": "set_metadata", "value": k.value(RECORD)}}))
            print(f"\n{n} cells ({2 * n} turns), whole record {whole:,} B")
            print(f"{'move':<34} {'after B':>9}  messages")
            middle = n // 2
            for what, move in [
                ("one cell down past one", lambda c: [*c[:middle], c[middle + 1], c[middle],
                                                      *c[middle + 2:]]),
                ("the last cell to the top", lambda c: [c[-1], *c[:-1]]),
            ]:
                order = move(cells)
                sent = len(fe.received)
                fe.order(order)
                k.sync()
                got = [(d["type"], size) for d, size in fe.received[sent:] if d["type"] != "stale"]
                kinds = ",".join(sorted({kind for kind, _ in got}))
                print(f"{what:<34} {sum(size for _, size in got):>9,}  {kinds}")
                cells = order
            assert fe.record == k.value(RECORD), "the front end's record differs from the kernel's"


if __name__ == "__main__":
    main()
