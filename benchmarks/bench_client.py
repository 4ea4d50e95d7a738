"""Client-side cost of streaming, against one local fake server run as a subprocess.

Side by side, in one run and against the same server (its CPU is not counted here):

- ``bare``   a plain httpx + httpx_sse loop: json.loads each event, take choices[0].delta.content;
- ``ours``   ``jupyter_llmchat.chat_openai_compatible(...).stream(...)``;
- ``openai`` the openai SDK's ``chat.completions.create(stream=True)``, if it is importable
             (it is not a dependency: ``pip install openai`` for this benchmark only).

Measured: client CPU time per streamed chunk (``time.process_time`` around one whole 5000-chunk
answer, median of 5 repetitions, the implementations interleaved), warm time-to-first-token
(median of 30 small requests after warm-up) and import time (fresh interpreters, median of 10).

Targets (DESIGN.md section 8): CPU per chunk <= 1.5x bare and <= 1/4 of openai's; TTFT overhead
<= 2 ms over bare. This script only prints numbers; it exits non-zero only if it crashes.

Run from the repository root:  .venv/bin/python benchmarks/bench_client.py [--chunks 5000] [--reps 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The server is on loopback: never go through a proxy from the environment.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
os.environ.pop("OPENAI_API_KEY", None)

import httpx  # noqa: E402
from httpx_sse import EventSource  # noqa: E402

import jupyter_llmchat  # noqa: E402
from tests.fake_openai import FakeOpenAIProcess, Reply, big_text  # noqa: E402

MODEL = "test-model"
PROMPT = "Tell me a long story."
SMALL_TEXT = "Hello from the fake server."

class NoDelayFakeServer(FakeOpenAIProcess):
    """The same fake server with TCP_NODELAY on its sockets.

    ``http.server`` leaves Nagle's algorithm on, and the fake server writes the response headers
    and the body in separate sends: on a reused keep-alive connection the body then waits for
    the client's delayed ACK (~40 ms on Linux). Real servers (uvicorn, vLLM) set TCP_NODELAY;
    this variant shows the client's own time to first token.
    """

    def start(self, timeout: float = 30.0) -> NoDelayFakeServer:
        code = ("import tests.fake_openai as f; "
                "f._Handler.disable_nagle_algorithm = True; f.main()")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *self.args], cwd=self.ROOT, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake server did not start (first line: {line!r})")
        self.base_url = line.split()[1]
        return self


Runner = Callable[[], tuple[int, float]]  # -> (content chunks, seconds to the first one)


def bare_runner(base_url: str, drain: bool = True) -> Runner:
    """The bare loop. ``drain``: read the body to its end, as ``ours`` does, so the keep-alive
    connection is reused; otherwise stop at ``[DONE]``, which (when the body's last chunk has not
    arrived yet) makes httpx drop the connection and open a new one for the next request."""
    client = httpx.Client(timeout=300)
    url = f"{base_url}/chat/completions"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    def run() -> tuple[int, float]:
        out: list[str] = []
        first = 0.0
        t0 = time.perf_counter()
        with client.stream("POST", url, json=body) as resp:
            for sse in EventSource(resp).iter_sse():
                if sse.data == "[DONE]":
                    if drain:
                        continue
                    break
                obj = json.loads(sse.data)
                choices = obj.get("choices")
                if choices:
                    content = choices[0]["delta"].get("content")
                    if content:
                        if not out:
                            first = time.perf_counter() - t0
                        out.append(content)
        return len(out), first

    return run


def ours_runner(base_url: str) -> Runner:
    chat = jupyter_llmchat.chat_openai_compatible(base_url, model=MODEL)

    def run() -> tuple[int, float]:
        n = 0
        first = 0.0
        t0 = time.perf_counter()
        # history=False: every repetition sends the same one-message request as the others.
        for _piece in chat.stream(PROMPT, history=False):
            if not n:
                first = time.perf_counter() - t0
            n += 1
        return n, first

    return run


def openai_runner(base_url: str) -> Runner | None:
    try:
        import openai
    except ImportError:
        return None
    client = openai.OpenAI(base_url=base_url, api_key="not-used", max_retries=0)

    def run() -> tuple[int, float]:
        n = 0
        first = 0.0
        t0 = time.perf_counter()
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not n:
                    first = time.perf_counter() - t0
                n += 1
        return n, first

    return run


def cpu_per_chunk(runners: dict[str, Runner], reps: int, expected: int) -> dict[str, list[float]]:
    """Client CPU seconds per content chunk, one sample per repetition per runner."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for name, run in runners.items():  # warm-up: connections, lazy imports, caches
        n, _ = run()
        if n != expected:
            raise RuntimeError(f"{name}: got {n} chunks, expected {expected}")
    for _ in range(reps):
        for name, run in runners.items():
            gc.collect()
            c0 = time.process_time()
            n, _ = run()
            c1 = time.process_time()
            if n != expected:
                raise RuntimeError(f"{name}: got {n} chunks, expected {expected}")
            samples[name].append((c1 - c0) / n)
    return samples


def ttft(runners: dict[str, Runner], n: int, gap: float, warmup: int = 5) -> dict[str, list[float]]:
    """Seconds from sending a request to its first content piece.

    ``gap`` > 0: the runners take turns, with ``gap`` seconds of idleness before every request
    (a user's pace). ``gap`` == 0: each runner sends its ``n`` requests back to back.
    """
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for name, run in runners.items():
        for _ in range(warmup):
            run()
    if gap > 0:
        for _ in range(n):
            for name, run in runners.items():
                time.sleep(gap)
                samples[name].append(run()[1])
    else:
        for name, run in runners.items():
            samples[name] = [run()[1] for _ in range(n)]
    return samples


def import_times(n: int) -> dict[str, list[float]]:
    """Wall seconds of fresh interpreters running each snippet (Python's own start included)."""
    url = "http://127.0.0.1:9/v1"
    snippets = {
        "python -c pass": "pass",
        "import httpx": "import httpx",
        "import httpx, httpx_sse": "import httpx, httpx_sse",
        "import jupyter_llmchat": "import jupyter_llmchat",
        "... + chat_openai_compatible(...)": (
            "import jupyter_llmchat as j; j.chat_openai_compatible("
            f"{url!r}, model='m')"
        ),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out: dict[str, list[float]] = {k: [] for k in snippets}
    for _ in range(n):
        for label, code in snippets.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
            out[label].append(time.perf_counter() - t0)
    return out


def importtime_rows(module_code: str) -> list[tuple[int, str]]:
    """(cumulative microseconds, indented module name) per import under ``-X importtime``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", module_code],
        capture_output=True, text=True, check=True, env=env, cwd=ROOT,
    )
    rows = []
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, rest = line.split(":", 1)
        _self, cum, name = rest.split("|")
        rows.append((int(cum), name.rstrip()))
    return rows


def report_ttft(label: str, runners: dict[str, Runner], base_url: str, n: int, gap: float) -> None:
    runners = {**runners, "bare-brk": bare_runner(base_url, drain=False)}
    tt = ttft(runners, n, gap)
    pace = f"{gap * 1e3:.0f} ms idle before each request" if gap > 0 else "back to back"
    print(f"\n== warm time to first token: {label}, {pace} "
          f"({len(SMALL_TEXT)}-char answer, median of {n}) ==")
    for name, xs in tt.items():
        print(f"  {name:8s} {med(xs) * 1e3:7.3f} ms   (min {min(xs) * 1e3:.3f}, max {max(xs) * 1e3:.3f})")
    over = (med(tt["ours"]) - med(tt["bare"])) * 1e3
    print(f"  ours - bare   = {over:+.3f} ms   (target <= 2 ms: {'met' if over <= 2 else 'MISSED'})")
    print(f"  ours/bare     = {med(tt['ours']) / med(tt['bare']):.2f}x")
    if "openai" in tt:
        print(f"  ours/openai   = {med(tt['ours']) / med(tt['openai']):.2f}x")


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=5000)
    ap.add_argument("--chunk-chars", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ttft-n", type=int, default=30)
    ap.add_argument("--ttft-gap", type=float, default=0.1,
                    help="seconds of idleness before each paced TTFT request")
    ap.add_argument("--import-n", type=int, default=10)
    args = ap.parse_args()

    print(f"python {sys.version.split()[0]}, httpx {httpx.__version__}, jupyter_llmchat "
          f"{jupyter_llmchat.__version__}, {os.cpu_count()} CPUs")
    big = Reply(text=big_text(args.chunks * args.chunk_chars), chunk_chars=args.chunk_chars)
    small = Reply(text=SMALL_TEXT, chunk_chars=8)
    with FakeOpenAIProcess() as srv:
        runners: dict[str, Runner] = {
            "bare": bare_runner(srv.base_url),
            "ours": ours_runner(srv.base_url),
        }
        oa = openai_runner(srv.base_url)
        if oa is not None:
            import openai

            runners["openai"] = oa
            print(f"openai SDK {openai.__version__}")
        else:
            print("openai SDK not importable: skipped (pip install openai to compare)")

        # -- CPU per chunk ---------------------------------------------------------------------
        srv.configure(default_reply=big)
        cpu = cpu_per_chunk(runners, args.reps, args.chunks)
        print(f"\n== client CPU per streamed chunk ({args.chunks} chunks of {args.chunk_chars} chars, "
              f"median of {args.reps}) ==")
        for name, xs in cpu.items():
            print(f"  {name:7s} {med(xs) * 1e6:8.2f} us/chunk   "
                  f"(min {min(xs) * 1e6:.2f}, max {max(xs) * 1e6:.2f}; "
                  f"{med(xs) * args.chunks * 1e3:.1f} ms per answer)")
        ratio_bare = med(cpu["ours"]) / med(cpu["bare"])
        print(f"  ours/bare   = {ratio_bare:.2f}x   (target <= 1.5x: "
              f"{'met' if ratio_bare <= 1.5 else 'MISSED'})")
        if "openai" in cpu:
            ratio_oa = med(cpu["ours"]) / med(cpu["openai"])
            print(f"  ours/openai = {ratio_oa:.2f}x   (target <= 0.25x: "
                  f"{'met' if ratio_oa <= 0.25 else 'MISSED'})")

        # -- time to first token ---------------------------------------------------------------
        # bare reads each body to its end, as ours does, so both reuse their keep-alive
        # connection; bare-brk stops at [DONE] before the body's last chunk has arrived, so
        # httpx drops the connection and opens a new one for every request (openai does too).
        srv.configure(default_reply=small)
        report_ttft("fake server as shipped", runners, srv.base_url, args.ttft_n, args.ttft_gap)
        report_ttft("fake server as shipped", runners, srv.base_url, args.ttft_n, 0.0)
        print("  (the fake server sets TCP_NODELAY; without it, back-to-back requests on a reused\n"
              "   connection wait ~40 ms for the client's delayed ACK, bare and ours alike)")

    with NoDelayFakeServer() as srv2:
        srv2.configure(default_reply=small)
        runners2: dict[str, Runner] = {"bare": bare_runner(srv2.base_url), "ours": ours_runner(srv2.base_url)}
        oa2 = openai_runner(srv2.base_url)
        if oa2 is not None:
            runners2["openai"] = oa2
        report_ttft("fake server with TCP_NODELAY", runners2, srv2.base_url, args.ttft_n, 0.0)

    # -- import time -----------------------------------------------------------------------------
    it = import_times(args.import_n)
    base = med(it["python -c pass"])
    print(f"\n== import time (fresh interpreter wall time, median of {args.import_n}) ==")
    for label, xs in it.items():
        extra = "" if label == "python -c pass" else f"   (+{(med(xs) - base) * 1e3:6.1f} ms over bare python)"
        print(f"  {label:36s} {med(xs) * 1e3:7.1f} ms{extra}")
    httpx_cost = med(it["import httpx"]) - base
    ours_cost = med(it["import jupyter_llmchat"]) - base
    print(f"  import jupyter_llmchat / import httpx (net of python start) = "
          f"{ours_cost / httpx_cost:.2f}x" if httpx_cost > 0 else "")
    rows = importtime_rows(
        "import jupyter_llmchat as j; j.chat_openai_compatible('http://127.0.0.1:9/v1', model='m')"
    )
    wanted = ("jupyter_llmchat", "jupyter_llmchat._core._presets", "jupyter_llmchat._core._chat",
              "jupyter_llmchat._core._provider", "httpx", "httpx_sse", "genai_prices", "pydantic")
    print("  -X importtime of 'import jupyter_llmchat; chat_openai_compatible(...)', cumulative:")
    for cum, name in rows:
        if name.strip() in wanted:
            print(f"    {cum / 1e3:7.1f} ms {name}")

if __name__ == "__main__":
    main()
