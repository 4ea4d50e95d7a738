"""``jupyter-llmchat export`` of a 2,000-turn notebook (DESIGN §8: <= 2 s).

A notebook of 1,000 ``%%chat`` cells, each with its exchange in the record (2,000 turns: a
prompt and an answer of ~1,500 characters of Markdown with a code block, a list and a table;
every tenth answer with thinking, and its cells in an order other than the record's so the
ordering does work). Timed: the command end to end in a fresh process (interpreter start-up
included), and the export alone in this process (median of 5), to Markdown and to HTML; wall
time and CPU time (the CPU time moves less when other jobs share the machine).

Only prints numbers; exits non-zero only if it crashes.
Run from the repository root:  .venv/bin/python benchmarks/bench_export.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jupyter_llmchat._cli import main  # noqa: E402

EXCHANGES = 1_000
ANSWER = """Here is how to do it with **pandas**, step by step:

1. read the file with `pd.read_csv`;
2. group by the region and sum;
3. sort the result.

```python
import pandas as pd
df = pd.read_csv("sales.csv")
out = df.groupby("region")["amount"].sum().sort_values(ascending=False)
print(out.head())
```

| region | amount |
|---|---:|
| north | 1,200 |
| south | 950 |

See [the docs](https://pandas.pydata.org/docs/) for *more* options. Note that `groupby` keeps the
group keys as the index unless you pass `as_index=False`; that matters when you merge afterwards.
"""


def notebook() -> dict[str, Any]:
    turns: list[dict[str, Any]] = []
    for i in range(EXCHANGES):
        cell = f"cell-{i:04d}"
        turns.append({"role": "user", "contents": [{"type": "text", "text": f"Question {i}: how do I sum sales by region?"}],
                      "cell_id": cell, "source": "cell", "started_at": "2026-01-02T03:04:05+00:00", "duration_s": None})
        contents: list[dict[str, Any]] = [{"type": "text", "text": ANSWER}]
        if i % 10 == 0:
            contents.insert(0, {"type": "thinking", "thinking": "The user wants a groupby. " * 20})
        turns.append({"role": "assistant", "contents": contents, "cell_id": cell, "source": "cell",
                      "started_at": "2026-01-02T03:04:06+00:00", "duration_s": 1.5, "model": "gpt-4o-mini",
                      "tokens": {"input": 1000 + i, "output": 400, "cached": 0}, "cost_usd": 0.00039,
                      "finish_reason": "stop", "partial": False})
    record = {"version": 1, "usage": [{"provider": "OpenAI", "model": "gpt-4o-mini", "turns": EXCHANGES,
                                       "input": 1_500_000, "output": 400_000, "cached": 0, "cost_usd": 0.39}],
              "sessions": {"default": {"provider": {"name": "OpenAI", "base_url": "https://api.openai.com/v1",
                                                    "model": "gpt-4o-mini"}, "system_prompt": None, "turns": turns}}}
    # The cells in another order than the record's: every pair swapped.
    ids = [f"cell-{i ^ 1:04d}" for i in range(EXCHANGES)]
    cells = [{"id": c, "cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
              "source": "%%chat\nQuestion"} for c in ids]
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"jupyter_llmchat": record}, "cells": cells}


def main_bench() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nb = Path(tmp) / "big.ipynb"
        nb.write_text(json.dumps(notebook(), indent=1), encoding="utf-8")
        turns = 2 * EXCHANGES
        print(f"jupyter-llmchat export, a notebook of {turns:,} turns ({nb.stat().st_size / 1e6:.1f} MB)")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for ext in ("md", "html"):
            out = Path(tmp) / f"out.{ext}"
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "jupyter_llmchat", "export", str(nb), "-o", str(out)],
                               env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
            if r.returncode != 0:
                raise SystemExit(r.stderr)
            times, cpus = [], []
            for _ in range(5):
                p0 = time.process_time()
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # its "written to" line
                    code = main(["export", str(nb), "-o", str(out)])
                if code != 0:
                    raise SystemExit("export failed")
                times.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - p0)
            print(f"  {ext:<4}  command (fresh process) {wall:5.2f} s wall, {cpu:5.2f} s CPU   "
                  f"export in process median {statistics.median(times):5.2f} s wall, "
                  f"{statistics.median(cpus):5.2f} s CPU   output {out.stat().st_size / 1e6:.1f} MB   "
                  "(target <= 2 s)")


if __name__ == "__main__":
    main_bench()
