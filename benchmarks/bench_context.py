"""Cost of notebook context and replay.

1. ``--with`` summaries of 10-million-row values: a pandas DataFrame (a float, an int and a
   string column), the same as a polars DataFrame, and a numpy array of 10 million floats.
   Time of ``summarize()`` (median of 3) and the summary's size in characters and estimated
   tokens, next to the same for a 1,000-row frame: the prompt costs the same whatever the size.

2. Fingerprints for the replay key (``fingerprint()``) of the same 10-million-row frames (an
   int, a float and a string column): the sampled path (their default: they are over the
   64 MB hashed exactly), and the exact path forced (``exact_limit`` raised), median of 3.

3. Replay: a ``%%chat`` cell run once against the fake server (in this process), then re-run
   200 times in a real IPython shell. Each re-run shows the recorded answer with no request.
   Time per re-run (median, p95) and the number of requests the server saw.
   Target (DESIGN §8): no request, <= 50 ms per cell.

4. Replay of a ``%%chat --with df`` cell, ``df`` a 10-million-row pandas frame: each re-run
   summarises the value and fingerprints its content (the replay key's ``--with`` part) before
   it can replay; 10 re-runs, median, and the requests the server saw.

Only prints numbers; exits non-zero only if it crashes.
Run from the repository root:  .venv/bin/python benchmarks/bench_context.py
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jupyter_llmchat._jupyter._context import fingerprint, summarize  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply  # noqa: E402

ROWS = 10_000_000


def timed(fn, repeat: int = 3) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_summaries() -> None:
    import numpy as np

    print(f"1. --with summaries ({ROWS:,} rows), context_max_tokens=2000")
    print(f"   {'value':<34} {'time':>9} {'chars':>7} {'~tokens':>8}")
    rng = np.random.default_rng(0)
    x = rng.normal(size=ROWS)
    n = np.arange(ROWS) % 1000
    s = np.array(["north", "south", "east", "west"])[np.arange(ROWS) % 4]
    values: list[tuple[str, object]] = [("numpy float64 array", x)]
    try:
        import pandas as pd

        big = pd.DataFrame({"x": x, "n": n, "region": s})
        values += [("pandas DataFrame, 1,000 rows", big.head(1000)), ("pandas DataFrame", big)]
    except ImportError:
        print("   (pandas not installed)")
    try:
        import polars as pl

        values.append(("polars DataFrame", pl.DataFrame({"x": x, "n": n, "region": s})))
    except ImportError:
        print("   (polars not installed)")
    for label, value in values:
        t, a = timed(lambda: summarize("v", value))
        print(f"   {label:<34} {t * 1000:>7.1f} ms {a.chars:>7,} {a.tokens:>8,}")  # type: ignore[attr-defined]


def bench_fingerprints() -> None:
    import numpy as np

    print(f"\n2. fingerprint() of {ROWS:,}-row values (replay key)")
    print(f"   {'value':<24} {'sampled (default)':>18} {'exact (forced)':>15}")
    rng = np.random.default_rng(0)
    x = rng.normal(size=ROWS)
    n = np.arange(ROWS) % 1000
    s = np.array(["north", "south", "east", "west"])[np.arange(ROWS) % 4]
    values: list[tuple[str, object]] = [("numpy float64 array", x)]
    try:
        import pandas as pd

        values.append(("pandas DataFrame", pd.DataFrame({"x": x, "n": n, "region": s.astype(object)})))
    except ImportError:
        print("   (pandas not installed)")
    try:
        import polars as pl

        values.append(("polars DataFrame", pl.DataFrame({"x": x, "n": n, "region": s})))
    except ImportError:
        print("   (polars not installed)")
    for label, value in values:
        t_s, fp = timed(lambda: fingerprint(value))
        t_e, exact = timed(lambda: fingerprint(value, exact_limit=2**40))
        assert fp.sampled and not exact.sampled  # type: ignore[attr-defined]
        print(f"   {label:<24} {t_s * 1000:>15.1f} ms {t_e * 1000:>12.1f} ms")


def bench_replay(n: int = 200) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    print(f"\n3. replayed %%chat cell, {n} re-runs in an IPython shell")
    os.environ.pop("OPENAI_API_KEY", None)
    with FakeOpenAI() as fake:
        fake.default_reply = Reply(text="A recorded answer. " * 40)
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "jupyter_llmchat")
        shell.run_line_magic("config", f"ChatMagics.base_url = {fake.base_url!r}")
        shell.run_line_magic("config", "ChatMagics.model = 'test-model'")
        # A notebook cell's id, as JupyterLab sends it: re-runs of this cell replay.
        shell.parent_header = {"metadata": {"cellId": "bench-cell"}}
        cell = "Summarise the recorded answer in one line, please."
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink):
            shell.run_cell_magic("chat", "", cell)
            first = len(fake.chat_requests())
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                shell.run_cell_magic("chat", "", cell)
                times.append(time.perf_counter() - t0)
        replays = sink.getvalue().count("replayed (recorded")
        times.sort()
        print(f"   requests: first run {first}, re-runs {len(fake.chat_requests()) - first} "
              f"(replayed {replays} of {n})")
        print(f"   per re-run: median {statistics.median(times) * 1000:.2f} ms, "
              f"p95 {times[int(0.95 * n) - 1] * 1000:.2f} ms  (target <= 50 ms, no request)")


def bench_replay_with(n: int = 10) -> None:
    import numpy as np
    import pandas as pd
    from IPython.core.interactiveshell import InteractiveShell

    print(f"\n4. replayed %%chat --with df cell, df {ROWS:,} rows, {n} re-runs")
    rng = np.random.default_rng(0)
    regions = np.array(["north", "south", "east", "west"], dtype=object)[np.arange(ROWS) % 4]
    df = pd.DataFrame({"x": rng.normal(size=ROWS), "n": np.arange(ROWS) % 1000, "region": regions})
    os.environ.pop("OPENAI_API_KEY", None)
    with FakeOpenAI() as fake:
        shell = InteractiveShell.instance()
        if "jupyter_llmchat" not in shell.extension_manager.loaded:  # part 3 may have loaded it
            shell.run_line_magic("load_ext", "jupyter_llmchat")
        shell.run_line_magic("config", f"ChatMagics.base_url = {fake.base_url!r}")
        shell.run_line_magic("config", "ChatMagics.model = 'test-model'")
        shell.parent_header = {"metadata": {"cellId": "bench-with-cell"}}
        shell.user_ns["df"] = df
        cell = "Describe df in one line."
        with contextlib.redirect_stdout(io.StringIO()):
            shell.run_cell_magic("chat", "--with df", cell)
            first = len(fake.chat_requests())
            t, _ = timed(lambda: shell.run_cell_magic("chat", "--with df", cell), repeat=n)
        print(f"   requests: first run {first}, re-runs {len(fake.chat_requests()) - first}")
        print(f"   per re-run: median {t * 1000:.1f} ms (summary and fingerprint included)")


if __name__ == "__main__":
    bench_summaries()
    bench_fingerprints()
    bench_replay()
    bench_replay_with()
