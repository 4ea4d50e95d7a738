"""Cost of the Jupyter layer: ``%load_ext`` time and IOPub bytes of a streamed answer.

1. ``%load_ext jupyter_llmchat`` over a bare IPython shell: fresh interpreters (median of 10),
   each creating ``InteractiveShell.instance()`` and then timing
   ``shell.run_line_magic("load_ext", "jupyter_llmchat")`` (the package's import included).
   Also timed, for information: creating the first session (what the first ``%%chat`` pays
   before its request), and ``%load_ext`` inside a real kernel (one sample).
   Target: <= 150 ms.

2. IOPub bytes for a 100k-character answer streamed fast (the fake server, a subprocess, sends
   it in 8-character chunks with no delay). A real kernel runs ``%load_ext``, ``%config`` and a
   ``%%chat`` cell; we sum ``len(json.dumps(msg["content"]))`` over its display_data and
   update_display_data messages. Baseline, measured in the same kernel: a cell streaming the same
   answer with plain httpx and calling ``update_display({"text/markdown": text_so_far})`` on
   every chunk. Then the same answer paced over a few seconds, for the message rate.
   Targets: final bundle <= 2x the answer + 8 kB; intermediate updates <= 1x + 64 kB;
   messages while streaming <= display_rate_hz (10) per second.

Only prints numbers; exits non-zero only if it crashes.
Run from the repository root:  .venv/bin/python benchmarks/bench_magics.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_openai import FakeOpenAIProcess, Reply, big_text  # noqa: E402

ANSWER_CHARS = 100_000
CHUNK_CHARS = 8
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
    ENV.pop(_var, None)

# -- 1. %load_ext time ------------------------------------------------------------------------

LOAD_EXT_PROBE = r"""
import json, time
t0 = time.perf_counter()
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
t1 = time.perf_counter()
shell.run_line_magic("load_ext", "jupyter_llmchat")
t2 = time.perf_counter()
shell.run_line_magic("config", "ChatMagics.base_url = 'http://127.0.0.1:9/v1'")
shell.run_line_magic("config", "ChatMagics.model = 'm'")
from jupyter_llmchat import _sessions
t3 = time.perf_counter()
_sessions.session("default")
t4 = time.perf_counter()
print(json.dumps({"shell": t1 - t0, "load_ext": t2 - t1, "first_session": t4 - t3}))
"""


#: As on a user's machine, imports read cached bytecode (pip compiles installed packages; an
#: editable checkout writes its own on first import). With PYTHONDONTWRITEBYTECODE set, as on
#: some CI machines, every import would compile our sources again: ~100 ms of the figure. The
#: cache goes to a directory of its own, outside the checkout.
_PYCACHE = tempfile.mkdtemp(prefix="llmchat-bench-pycache-")
IMPORT_ENV = {k: v for k, v in ENV.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPYCACHEPREFIX": _PYCACHE}


def load_ext_times(n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"shell": [], "load_ext": [], "first_session": []}
    for i in range(n + 1):  # the first run writes the bytecode cache: not counted
        res = subprocess.run(
            [sys.executable, "-c", LOAD_EXT_PROBE], capture_output=True, text=True, env=IMPORT_ENV,
            cwd=ROOT, check=True,
        )
        data = json.loads(res.stdout.strip().splitlines()[-1])
        for k in out:
            if i:
                out[k].append(data[k])
    return out


def importtime_of_load_ext() -> list[tuple[int, int, str]]:
    """(self us, cumulative us, module) imported by %load_ext after the shell exists."""
    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "import sys; sys.stderr.write('--- load_ext ---\\n')\n"
        "shell.run_line_magic('load_ext', 'jupyter_llmchat')\n"
    )
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=IMPORT_ENV,
        cwd=ROOT, check=True,
    )
    rows = []
    after = False
    for line in res.stderr.splitlines():
        if line.startswith("--- load_ext"):
            after = True
            continue
        if not after or not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum, name = line.split(":", 1)[1].split("|")
        rows.append((int(self_us), int(cum), name.rstrip()))
    return rows


# -- 2. IOPub bytes ---------------------------------------------------------------------------


@dataclass
class CellResult:
    wall: float = 0.0
    displays: list[tuple[str, int, float]] = field(default_factory=list)  # (type, bytes, kernel time)
    comm_bytes: int = 0
    comm_msgs: int = 0
    stream_text: str = ""
    status: str = ""
    error: str = ""
    final_content: dict[str, Any] | None = None
    #: The answer's display (the cell's first display_data); other displays (the footer line
    #: under the answer) are counted apart, in ``other_bytes``.
    answer_id: str | None = None
    other_bytes: int = 0
    other_msgs: int = 0


def execute(kc: Any, code: str, timeout: float = 600) -> CellResult:
    """Run ``code``; account for every IOPub message the cell caused, until it is idle."""
    res = CellResult()
    t0 = time.perf_counter()
    msg_id = kc.execute(code)
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        content = msg["content"]
        if kind in ("display_data", "update_display_data"):
            display_id = (content.get("transient") or {}).get("display_id")
            if res.answer_id is None and kind == "display_data":
                res.answer_id = display_id
            if display_id is None or display_id != res.answer_id:
                res.other_msgs += 1
                res.other_bytes += len(json.dumps(content))
                continue
            when = msg["header"]["date"]
            res.displays.append((kind, len(json.dumps(content)), when.timestamp()))
            res.final_content = content
        elif kind == "comm_msg":
            res.comm_msgs += 1
            res.comm_bytes += len(json.dumps(content))
        elif kind == "stream":
            res.stream_text += content["text"]
        elif kind == "error":
            res.error = f"{content['ename']}: {content['evalue']}"
        elif kind == "status" and content["execution_state"] == "idle":
            break
    res.wall = time.perf_counter() - t0
    reply = kc.get_shell_msg(timeout=timeout)
    res.status = reply["content"]["status"]
    if res.status != "ok" and not res.error:
        res.error = str(reply["content"])
    return res


def check(res: CellResult, what: str) -> CellResult:
    if res.error or res.status != "ok":
        raise RuntimeError(f"{what} failed: {res.error or res.status}\n{res.stream_text}")
    return res


UNLIMITED_IOPUB = r"""
import zmq as _zmq
_iopub = get_ipython().kernel.iopub_thread
_iopub.schedule(lambda: _iopub.socket.setsockopt(_zmq.SNDHWM, 0))
"""

BASELINE_CELL = r"""
import json as _json
import httpx as _httpx
from httpx_sse import EventSource as _EventSource
from IPython.display import display as _display, update_display as _update_display

_h = _display({"text/markdown": ""}, raw=True, display_id=True)
_parts = []
_body = {"model": "test-model", "messages": [{"role": "user", "content": "Write a long answer."}],
         "stream": True}
with _httpx.Client(timeout=300) as _c, _c.stream("POST", %(url)r, json=_body) as _r:
    for _sse in _EventSource(_r).iter_sse():
        if _sse.data == "[DONE]":
            continue
        _choices = _json.loads(_sse.data).get("choices")
        if _choices and _choices[0]["delta"].get("content"):
            _parts.append(_choices[0]["delta"]["content"])
            _update_display({"text/markdown": "".join(_parts)}, raw=True, display_id=_h.display_id)
print(len("".join(_parts)))
"""


def kib(n: float) -> str:
    return f"{n / 1000:,.1f} kB"


def report_displays(label: str, res: CellResult, answer: int) -> tuple[int, int]:
    sizes = [b for _, b, _ in res.displays]
    total = sum(sizes)
    final = sizes[-1] if sizes else 0
    inter = total - final
    n = len(sizes)
    dur = res.displays[-1][2] - res.displays[0][2] if n > 1 else 0.0
    print(f"  {label}: {n} display messages ({n - 1} intermediate + final) in {res.wall:.2f} s of cell "
          f"wall time, {dur:.2f} s from first to last display")
    print(f"    total {kib(total)} = {total / answer:.2f}x the answer; "
          f"intermediate {kib(inter)}, final {kib(final)}")
    if res.other_msgs:
        print(f"    besides the answer's display: {res.other_msgs} other display message(s) "
              f"(the footer line), {kib(res.other_bytes)}")
    return total, final


def max_rate(res: CellResult, window: float = 1.0) -> int:
    """Most display messages in any ``window`` seconds (by the kernel's timestamps)."""
    times = sorted(t for _, _, t in res.displays)
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="fresh interpreters for the %%load_ext time")
    ap.add_argument("--paced-seconds", type=float, default=5.0,
                    help="about how long the paced stream lasts (0: skip it)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the re-render-everything cell")
    args = ap.parse_args()

    # -- 1 ---------------------------------------------------------------------------------------
    t = load_ext_times(args.n)
    print(f"== %load_ext jupyter_llmchat over a bare IPython shell (fresh interpreters, median of {args.n}) ==")
    print(f"  InteractiveShell.instance() (imports included)  {statistics.median(t['shell']) * 1e3:7.1f} ms")
    le = statistics.median(t["load_ext"]) * 1e3
    print(f"  %load_ext jupyter_llmchat (import included)      {le:7.1f} ms   "
          f"(min {min(t['load_ext']) * 1e3:.1f}, max {max(t['load_ext']) * 1e3:.1f}; "
          f"target <= 150 ms: {'met' if le <= 150 else 'MISSED'})")
    print(f"  then creating the first session (first %%chat)   "
          f"{statistics.median(t['first_session']) * 1e3:7.1f} ms   (for information: not in the target)")
    rows = importtime_of_load_ext()
    top = sorted(rows, key=lambda r: -r[0])[:8]
    print(f"  -X importtime during %load_ext: {len(rows)} modules, {sum(r[0] for r in rows) / 1e3:.1f} ms "
          "of import in all; largest self times:")
    for self_us, _cum, name in top:
        print(f"    {self_us / 1e3:6.1f} ms  {name.strip()}")

    # -- 2 ---------------------------------------------------------------------------------------
    import tempfile

    import zmq
    from jupyter_client.manager import KernelManager

    answer = big_text(ANSWER_CHARS)
    print(f"\n== IOPub bytes for a {ANSWER_CHARS:,}-character answer in {CHUNK_CHARS}-character chunks "
          f"({ANSWER_CHARS // CHUNK_CHARS:,} chunks) ==")
    print(f"  (json.dumps(answer) alone is {kib(len(json.dumps(answer)))}: newlines and quotes are "
          "escaped on the wire)")
    with FakeOpenAIProcess(chunks=ANSWER_CHARS // CHUNK_CHARS, chunk_chars=CHUNK_CHARS) as srv:
        # As jupyter_client.manager.start_new_kernel, but the client's IOPub socket has no
        # receive high-water mark: the baseline's 12,500 large messages would otherwise overrun
        # it and ZeroMQ would silently drop some (and we would undercount its bytes).
        kernel_log = tempfile.TemporaryFile("w+")
        km = KernelManager(kernel_name="python3")
        km.start_kernel(env=ENV, cwd=str(ROOT), stderr=kernel_log)
        ctx = zmq.Context()
        ctx.setsockopt(zmq.RCVHWM, 0)
        kc = km.client(context=ctx)
        kc.start_channels()
        ok = False
        try:
            kc.wait_for_ready(timeout=60)
            r = check(execute(kc, (
                "import time as _t; _t0 = _t.perf_counter(); "
                "get_ipython().run_line_magic('load_ext', 'jupyter_llmchat'); "
                "print(f'{(_t.perf_counter() - _t0) * 1e3:.1f}')"
            )), "%load_ext")
            print(f"  %load_ext inside this fresh kernel: {r.stream_text.strip()} ms (one sample)")
            # ... and the kernel's IOPub socket no send high-water mark either (libzmq >= 4.3
            # applies it to the existing connection), set from the IOPub thread that owns it.
            check(execute(kc, UNLIMITED_IOPUB), "setting the IOPub SNDHWM")
            check(execute(kc, f"%config ChatMagics.base_url = {srv.base_url!r}"), "%config")
            check(execute(kc, '%config ChatMagics.model = "test-model"'), "%config")

            # Warm-up: the first %%chat creates the session and imports what it needs.
            srv.script(Reply(text="Warm-up answer."))
            check(execute(kc, "%%chat --no-history\nSay something short."), "warm-up %%chat")

            ours = check(execute(kc, "%%chat\nWrite a long answer."), "%%chat")
            total, final = report_displays("ours (%%chat)", ours, ANSWER_CHARS)
            inter = total - final
            fc = ours.final_content or {}
            fdata = fc.get("data", {})
            print("    final bundle: " + ", ".join(
                f"{k} {kib(len(json.dumps(v)))}" for k, v in fdata.items()
            ) + f", metadata {kib(len(json.dumps(fc.get('metadata', {}))))}")
            lim_final = 2 * ANSWER_CHARS + 8000
            lim_inter = ANSWER_CHARS + 64000
            print(f"    final {kib(final)} vs 2x answer + 8 kB = {kib(lim_final)}: "
                  f"target {'met' if final <= lim_final else 'MISSED by ' + kib(final - lim_final)}")
            enc = len(json.dumps(answer))
            print(f"    final {kib(final)} vs 2x the JSON-encoded answer + 8 kB = {kib(2 * enc + 8000)}: "
                  f"{'within' if final <= 2 * enc + 8000 else 'over'}")
            print(f"    intermediate {kib(inter)} vs 1x answer + 64 kB = {kib(lim_inter)}: "
                  f"target {'met' if inter <= lim_inter else 'MISSED'}")
            if ours.comm_msgs:
                print(f"    also {ours.comm_msgs} comm_msg ({kib(ours.comm_bytes)}): the set_metadata record "
                      "for the front-end extension (no front end here, so the comm stays open)")

            if not args.no_baseline:
                base = check(execute(kc, BASELINE_CELL % {"url": f"{srv.base_url}/chat/completions"}),
                             "baseline cell")
                got = int(base.stream_text.strip() or 0)
                btotal, _bfinal = report_displays("baseline (update_display per chunk)", base, ANSWER_CHARS)
                expected = ANSWER_CHARS // CHUNK_CHARS + 1
                if len(base.displays) != expected or got != ANSWER_CHARS:
                    print(f"    note: expected {expected} messages and {ANSWER_CHARS} chars, got "
                          f"{len(base.displays)} and {got} (IOPub may have dropped some)")
                print(f"  baseline/ours total bytes = {btotal / total:,.0f}x   "
                      f"(messages {len(base.displays)} vs {len(ours.displays)}; "
                      f"cell wall time {base.wall:.2f} s vs {ours.wall:.2f} s)")

            if args.paced_seconds > 0:
                delay = args.paced_seconds / (ANSWER_CHARS // CHUNK_CHARS)
                srv.script(Reply(text=answer, chunk_chars=CHUNK_CHARS, delay=delay))
                paced = check(execute(kc, "%%chat --no-history\nWrite a long answer, slowly."),
                              "paced %%chat")
                print(f"\n== the same answer paced (server delay {delay * 1e3:.2f} ms per chunk) ==")
                ptotal, pfinal = report_displays("ours (%%chat)", paced, ANSWER_CHARS)
                from jupyter_llmchat._jupyter._display import BYTES_PER_SECOND

                dur = paced.displays[-1][2] - paced.displays[0][2]
                rate = max_rate(paced)
                print(f"    most display messages in any 1 s: {rate}   (target <= 10: "
                      f"{'met' if rate <= 10 else 'MISSED'})")
                # _display.py's promise: intermediate updates total at most BYTES_PER_SECOND per
                # second of streaming plus the last one.
                last_inter = paced.displays[-2][1] if len(paced.displays) > 1 else 0
                budget = BYTES_PER_SECOND * dur + last_inter
                inter_p = ptotal - pfinal
                print(f"    intermediate {kib(inter_p)} vs {BYTES_PER_SECOND / 1000:.0f} kB/s x {dur:.2f} s + "
                      f"the last intermediate ({kib(last_inter)}) = {kib(budget)}: "
                      f"{'within' if inter_p <= budget else 'over'}")
            ok = True
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
            ctx.term()
            if not ok:
                kernel_log.seek(0)
                sys.stderr.write("kernel stderr:\n" + kernel_log.read())
            kernel_log.close()


if __name__ == "__main__":
    main()
