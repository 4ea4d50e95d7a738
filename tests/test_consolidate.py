"""``jupyter-llmchat consolidate``: the record rebuilt from outputs where no extension ran.

A notebook executed by nbclient (no front end, so no comm answers and nobody writes the
metadata) against the fake server; consolidate must then write exactly the record the kernel's
bridge held, which the notebook's last cell prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import quiet_run, run_notebook

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]
KEY = "jupyter_llmchat"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@pytest.fixture
def kernel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernel inherits this process's environment: no real server, no proxy for loopback."""
    for name in ("OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield


def executed_notebook(fake: FakeOpenAI, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """Run the chat notebook with nbclient; its path and the record the kernel's bridge held."""
    fake.script(
        Reply(text="**Paris**, on the Seine.", usage=usage(101, 7)),
        Reply(text="Berlin.", reasoning="Germany's capital is Berlin.", usage=usage(202, 3),
              finish_reason="length"),
        Reply(text="A side answer.", usage=usage(303, 4)),
        Reply(text="Not kept.", usage=usage(404, 3)),
        Reply(text="Rome, after the reset.", usage=usage(505, 5)),
    )
    sources = [
        "%load_ext jupyter_llmchat",
        f'%config ChatMagics.base_url = "{fake.base_url}"',
        '%config ChatMagics.model = "test-model"',
        "%%chat\nWhat is the capital of France?",
        "%%chat\nAnd of Germany?",
        "%%chat -s other\nSomething else.",
        "%%chat --no-history\nForget this one.",
        "%chat_reset",
        "%%chat\nAnd of Italy?",
        "import json, jupyter_llmchat._jupyter._bridge as b\nprint(json.dumps(b.current_bridge().record()))",
    ]
    nb = run_notebook(sources, tmp_path)
    kernel_record = quiet_run(nb)
    assert KEY not in nb.metadata  # nothing wrote the record: no extension
    path = tmp_path / "chats.ipynb"
    nbformat.write(nb, path)
    return path, kernel_record


def consolidate(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_llmchat", "consolidate", str(path), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ},
    )


def assert_refused(nb: Any, path: Path, reason: str) -> None:
    """consolidate refuses ``nb`` (saved at ``path``): exit 2, ``reason`` said without a
    traceback, the file left byte for byte."""
    nbformat.write(nb, path)
    before = path.read_bytes()
    done = consolidate(path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and reason in done.stderr
    assert path.read_bytes() == before


def test_consolidate_writes_the_kernels_record_and_is_idempotent(
    fake: FakeOpenAI, tmp_path: Path, kernel_env: None
) -> None:
    path, kernel_record = executed_notebook(fake, tmp_path)
    # What the kernel held: the reset emptied "default", whose last exchange came after it.
    assert [t["contents"][-1]["text"] for t in kernel_record["sessions"]["default"]["turns"]] == [
        "And of Italy?\n", "Rome, after the reset."]
    assert len(kernel_record["sessions"]["other"]["turns"]) == 2
    assert kernel_record["usage"][0]["turns"] == 5 and kernel_record["usage"][0]["input"] == 1515
    before = nbformat.read(path, as_version=4)

    done = consolidate(path)
    assert done.returncode == 0, done.stderr
    assert "2 session(s), 4 turn(s)" in done.stdout
    after = json.loads(path.read_text(encoding="utf-8"))
    assert after["metadata"][KEY] == kernel_record
    # Only the record was added: cells, outputs and the rest of the metadata are as they were.
    del after["metadata"][KEY]
    assert after == json.loads(nbformat.writes(before))

    first = path.read_bytes()
    again = consolidate(path)
    assert again.returncode == 0, again.stderr
    assert path.read_bytes() == first
    # The file is still a valid notebook, in nbformat's own layout (a minimal diff in git).
    nbformat.validate(nbformat.read(path, as_version=4))
    assert first.decode() == nbformat.writes(nbformat.read(path, as_version=4)) + "\n"


def test_dry_run_prints_the_record_and_writes_nothing(
    fake: FakeOpenAI, tmp_path: Path, kernel_env: None
) -> None:
    path, kernel_record = executed_notebook(fake, tmp_path)
    before = path.read_bytes()
    done = consolidate(path, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == kernel_record
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "meta",
    [
        pytest.param({"version": 1, "session": "<script>", "prompt": "hi"}, id="bad-session-name"),
        pytest.param({"version": 1, "prompt": 5}, id="prompt-number"),
        pytest.param({"version": 1, "prompt": "hi", "tokens": {"input": "many"}}, id="tokens-strings"),
        pytest.param({"version": 1, "prompt": "hi", "provider": "x"}, id="provider-string"),
        pytest.param({"version": 1, "prompt": "hi", "cost_usd": -1}, id="negative-cost"),
    ],
)
def test_malformed_outputs_are_refused_without_a_traceback(tmp_path: Path, meta: dict[str, Any]) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("%%chat\nhi", outputs=[
        nbformat.v4.new_output("display_data", data={"text/plain": "answer"}, metadata={KEY: meta}),
    ])])
    assert_refused(nb, tmp_path / "bad.ipynb", "malformed")


# -- merging into the record the notebook holds (issue "Trust", item 10) --------------------------


def panel_exchange() -> list[dict[str, Any]]:
    """A panel question and its answer: in the record only, never in an output."""
    common = {"source": "panel", "started_at": "2099-01-01T00:00:00+00:00"}
    return [
        {"role": "user", "contents": [{"type": "text", "text": "From the panel?"}], "duration_s": None, **common},
        {"role": "assistant", "contents": [{"type": "text", "text": "Yes."}], "duration_s": 0.5,
         "model": "test-model", "tokens": {"input": 7, "output": 1, "cached": None}, "cost_usd": None,
         "finish_reason": "stop", "partial": False, **common},
    ]


def set_record(path: Path, record: Any) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb["metadata"][KEY] = record
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


def test_consolidate_merges_into_the_existing_record(
    fake: FakeOpenAI, tmp_path: Path, kernel_env: None
) -> None:
    path, kernel_record = executed_notebook(fake, tmp_path)
    existing = json.loads(json.dumps(kernel_record))
    default = existing["sessions"]["default"]
    # What the front end saved earlier: the panel exchange, but not the last cell's exchange yet;
    # and the spend of an answer replaced since (one more turn than its turns show).
    latest = default["turns"][-2:]
    default["turns"] = default["turns"][:-2] + panel_exchange()
    existing["usage"][0].update(turns=6, input=1515 - 505 + 7 + 999, output=22 - 5 + 1 + 9)
    set_record(path, existing)

    done = consolidate(path)
    assert done.returncode == 0, done.stderr
    record = json.loads(path.read_text(encoding="utf-8"))["metadata"][KEY]
    turns = record["sessions"]["default"]["turns"]
    assert turns == latest + panel_exchange()  # ordered by time; the panel's kept
    assert record["sessions"]["other"] == kernel_record["sessions"]["other"]
    row = record["usage"][0]
    assert (row["turns"], row["input"], row["output"]) == (7, 1515 + 7 + 999, 22 + 1 + 9)

    first = path.read_bytes()
    assert consolidate(path).returncode == 0
    assert path.read_bytes() == first


def test_consolidate_keeps_mode_and_symlink(fake: FakeOpenAI, tmp_path: Path, kernel_env: None) -> None:
    path, kernel_record = executed_notebook(fake, tmp_path)
    path.chmod(0o664)
    link = tmp_path / "link.ipynb"
    link.symlink_to(path.name)
    done = consolidate(link)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == path.name
    assert json.loads(path.read_text(encoding="utf-8"))["metadata"][KEY] == kernel_record
    assert path.stat().st_mode & 0o777 == 0o664
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({"version": 2, "sessions": {}, "usage": []}, id="version-2"),
        pytest.param({"version": 1, "sessions": {"default": {"turns": "x"}}, "usage": []}, id="invalid"),
        pytest.param("<script>", id="not-an-object"),
    ],
)
def test_consolidate_refuses_a_record_it_cannot_read(tmp_path: Path, record: Any) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("%%chat\nhi", outputs=[
        nbformat.v4.new_output("display_data", data={"text/plain": "answer"},
                               metadata={KEY: {"version": 1, "prompt": "hi"}}),
    ])])
    nb.metadata[KEY] = record
    assert_refused(nb, tmp_path / "refused.ipynb", "left as it is")


def test_tool_rounds_survive_consolidate(fake: FakeOpenAI, tmp_path: Path, kernel_env: None) -> None:
    """An exchange with a tool round (user, assistant asking, user with the result, answer):
    consolidate rebuilds all four turns and counts both requests' spend, as the kernel did."""
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    fake.script(
        Reply(text="", tool_calls=[call], finish_reason="tool_calls", usage=usage(50, 9),
              tool_args_chars=3),
        Reply(text="It is **5**.", usage=usage(70, 4)),
    )
    sources = [
        "%load_ext jupyter_llmchat",
        f'%config ChatMagics.base_url = "{fake.base_url}"',
        '%config ChatMagics.model = "test-model"',
        "import jupyter_llmchat\n"
        "def add(a: int, b: int) -> int:\n    'Add two numbers.'\n    return a + b\n"
        "jupyter_llmchat.session().register_tool(add)",
        "%%chat\nWhat is 2 + 3?",
        "import json, jupyter_llmchat._jupyter._bridge as b\nprint(json.dumps(b.current_bridge().record()))",
    ]
    nb = run_notebook(sources, tmp_path)
    kernel_record = quiet_run(nb)
    turns = kernel_record["sessions"]["default"]["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2]["contents"][0]["type"] == "tool_result" and turns[2]["contents"][0]["value"] == 5
    assert kernel_record["usage"][0]["turns"] == 2 and kernel_record["usage"][0]["input"] == 120
    # The cell's output showed the call's line, escaped: the tool's name in a code element.
    (final,) = [o for o in nb.cells[4].outputs if KEY in (o.get("metadata") or {})]
    assert "<code>add</code>" in final.data["text/markdown"] and "ok" in final.data["text/markdown"]
    assert final.data["text/plain"] == "It is **5**."
    path = tmp_path / "tools.ipynb"
    nbformat.write(nb, path)
    done = consolidate(path)
    assert done.returncode == 0, done.stderr
    rebuilt = json.loads(path.read_text(encoding="utf-8"))["metadata"][KEY]
    assert rebuilt["sessions"]["default"]["turns"] == turns
    assert rebuilt == kernel_record


def test_consolidate_never_writes_a_record_the_kernel_would_refuse(tmp_path: Path) -> None:
    """A record at its limit of turns, and one more exchange in the outputs: the merge would
    pass the limit, so nothing is written (the kernel would refuse to read it)."""
    from jupyter_llmchat._record._metadata import MAX_TURNS

    def exchange(i: int) -> list[dict[str, Any]]:
        at = {"started_at": f"2026-01-01T00:00:{i % 60:02d}.{i:06d}+00:00"}
        return [{"role": "user", "contents": [{"type": "text", "text": f"q{i}"}], **at},
                {"role": "assistant", "contents": [{"type": "text", "text": f"a{i}"}], **at}]

    turns = [t for i in range(MAX_TURNS // 2) for t in exchange(i)]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("%%chat\nOne more", outputs=[
        nbformat.v4.new_output("display_data", data={"text/plain": "answer"},
                               metadata={KEY: {"version": 1, "prompt": "One more",
                                               "started_at": "2027-01-01T00:00:00+00:00"}}),
    ])])
    nb.metadata[KEY] = {"version": 1, "sessions": {"default": {"turns": turns}}, "usage": []}
    assert_refused(nb, tmp_path / "full.ipynb", "would not be read back")
