"""The notebook record over the comm, in real kernels (DESIGN §6-8), with a Python front end
doing what bridge.ts does (``tests/kernel_frontend.py``) and the fake server in a subprocess.

- a record the kernel refuses (from the file or the hello) is never written over, until
  ``%chat_reset --all`` (what it sends is within the limits it reads with: test_record_kernel.py);
- a kernel shared by two notebooks keeps one notebook's record only;
- after the first whole record, a turn sends only that turn (bytes do not grow with history);
- sessions are watched by object: a new Chat that reuses a freed id still reaches the record;
- the spend ledger counts the answers re-run by Restart Kernel and Run All.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from jupyter_llmchat._record._metadata import validate_record
from tests.fake_openai import FakeOpenAIProcess, Reply
from tests.kernel_frontend import FrontEnd, kernel, load, notebook_file, record_texts
from tests.test_restore import valid_record

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")


RECORD = "__import__('jupyter_llmchat._jupyter._bridge')._jupyter._bridge.current_bridge().record()"
LEDGER = "__import__('jupyter_llmchat._jupyter._bridge')._jupyter._bridge.current_bridge().ledger.to_list()"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def refused_record(case: str) -> dict[str, Any]:
    record = valid_record()
    if case == "version-2":
        record["version"] = 2
    elif case == "invalid":
        record["sessions"]["default"]["turns"][1]["role"] = "user"
    return record


@pytest.mark.parametrize("where", ["file", "hello"])
@pytest.mark.parametrize("case", ["version-2", "invalid"])
def test_a_refused_record_is_never_written_over(
    tmp_path: Path, server: FakeOpenAIProcess, where: str, case: str
) -> None:
    record = refused_record(case)
    nb = notebook_file(tmp_path / "refused.ipynb", record if where == "file" else None)
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("refused.ipynb", record))
        out = load(k, server.base_url)
        k.sync()
        out += k.ok("%chat Hello")
        out += k.ok("%%chat -s other\nAnd you")
        k.ok("%chat_reset")  # a reset of one session is not a replacement
        out += k.comm_output
        assert out.count("ignoring the notebook's chat record") == 1, out
        assert "%chat_reset --all" in out
        assert fe.received == []  # nothing at all for this notebook
        assert fe.record == record

        k.ok("%chat_reset --all")
        assert fe.kinds() and fe.kinds()[-1] == "set_metadata"
        validate_record(fe.record)
        assert fe.record["version"] == 1
        assert all(s["turns"] == [] for s in fe.record["sessions"].values())
        # From then on it is this kernel's record, and it follows the chat.
        server.reset()
        k.ok("%chat Again")
        assert record_texts(fe.record)[0] == "Again"
        assert fe.record == k.value(RECORD)


def test_a_kernel_shared_by_two_notebooks_writes_one_record(tmp_path: Path, server: FakeOpenAIProcess) -> None:
    a = notebook_file(tmp_path / "a.ipynb")
    theirs = valid_record()
    notebook_file(tmp_path / "b.ipynb", theirs)
    with kernel(a) as k:
        fe_a = k.attach(FrontEnd("a.ipynb"))
        load(k, server.base_url)
        # b.ipynb is switched to a's running kernel: it joins the comm and says hello.
        fe_b = k.attach(FrontEnd("b.ipynb", theirs, hello=False))
        fe_b.comm_id = fe_a.comm_id
        fe_b.say_hello()
        out = k.ok("%chat Hello from a")
        out += k.ok("%chat_reset --all")
        out += k.ok("%chat Once more") + k.comm_output
        assert fe_b.record == theirs  # untouched
        assert fe_b.received == [] and fe_b.ignored > 0
        assert k.value("__import__('jupyter_llmchat._sessions')._sessions.session_names()") == ["default"]  # b's not restored
        assert "b.ipynb" in out and "gets no record" in out
        assert fe_a.record == k.value(RECORD)
        assert fe_a.record["sessions"]["default"]["turns"][0]["contents"][0]["text"] == "Once more"


def test_updates_after_the_first_record_carry_only_the_turn(tmp_path: Path, server: FakeOpenAIProcess) -> None:
    nb = notebook_file(tmp_path / "delta.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("delta.ipynb"))
        load(k, server.base_url)
        k.ok("%chat 0")
        start = len(fe.received)
        sizes = []
        for i in range(1, 6):
            server.script(Reply(text=f"answer {i} " + "z" * 200, usage=usage(10 * i, 3)))
            k.ok(f"%chat question {i}")
            (data, size), = fe.received[start:]
            start += 1
            assert data["type"] == "append_turns", data["type"]
            assert data["session"] == "default" and data["from"] == 2 * i and len(data["turns"]) == 2
            sizes.append(size)
        # Proportional to the turn: the fifth costs what the first did, history notwithstanding.
        assert max(sizes) - min(sizes) < 100, sizes
        kernel_record = k.value(RECORD)
        assert fe.record == kernel_record
        # A reset is not an append: the whole record goes.
        k.ok("%chat_reset")
        assert fe.kinds()[-1] == "set_metadata"
        # A front end whose record is not the one the update follows asks for the whole record.
        k.ok("%chat one")
        k.ok("%chat two")
        fe.record["sessions"]["default"]["turns"] = fe.record["sessions"]["default"]["turns"][:2]
        k.ok("%chat three")
        k.sync()
        assert fe.kinds()[-2:] == ["append_turns", "set_metadata"]
        assert fe.record == k.value(RECORD)
        assert len(fe.record["sessions"]["default"]["turns"]) == 6


REUSE = """
from jupyter_llmchat import _sessions
from jupyter_llmchat._core._chat import Chat
from jupyter_llmchat._core._presets import chat_openai_compatible

def make():
    return chat_openai_compatible(base_url=BASE_URL, model='test-model')

allocate = Chat.__new__
for attempt in range(200):
    a = _sessions.use(make())  # watched by the bridge from now on
    _sessions.use(make())  # replaced (as %config and %chat_reset replace a session): a is freed
    oid = id(a)
    del a
    new = allocate(Chat)  # the freed Chat's memory, handed out again to a Chat (most times)
    if id(new) == oid:
        break
print('reused', id(new) == oid)
new.__init__(make().provider)
_sessions.use(new)
"""


def test_a_new_chat_with_a_freed_id_still_reaches_the_record(tmp_path: Path, server: FakeOpenAIProcess) -> None:
    nb = notebook_file(tmp_path / "ids.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("ids.ipynb"))
        load(k, server.base_url)
        k.ok("%chat first")
        assert "reused True" in k.ok(REUSE.replace("BASE_URL", repr(server.base_url)))
        k.ok("%chat second")
        texts = record_texts(fe.record)
        assert texts[0::2] == ["second"], texts
        assert fe.record == k.value(RECORD)


def test_restart_and_run_all_counts_the_rerun_answers(tmp_path: Path, server: FakeOpenAIProcess) -> None:
    """The file holds two answers' spend; the front end's unsaved record a third; the re-run
    cells make two more before its hello arrives (hello comes after Run All's cells)."""
    saved = {"version": 1, "sessions": {}, "usage": [
        {"provider": "OpenAI-compatible", "model": "test-model", "turns": 2, "input": 200,
         "output": 20, "cached": None, "cost_usd": None}]}
    unsaved = copy.deepcopy(saved)
    unsaved["usage"][0].update(turns=3, input=300, output=30)
    nb = notebook_file(tmp_path / "rerun.ipynb", saved)
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("rerun.ipynb", unsaved, hello=False))
        load(k, server.base_url)
        server.script(Reply(text="a", usage=usage(100, 10)), Reply(text="b", usage=usage(100, 10)))
        k.ok("%chat one")
        k.ok("%chat two")
        fe.say_hello()
        k.sync()
        expected = {"turns": 5, "input": 500, "output": 50}
        row = k.value(LEDGER)[0]
        assert {key: row[key] for key in expected} == expected, row
        assert {key: fe.record["usage"][0][key] for key in expected} == expected
        assert "5" in k.ok("print(repr(get_ipython().run_line_magic('chat_usage', '--all')))")
        # A page reload says hello again with what it was sent: nothing counted twice.
        fe.say_hello()
        k.sync()
        row = k.value(LEDGER)[0]
        assert {key: row[key] for key in expected} == expected, row


def test_the_spend_of_chats_that_are_no_session_reaches_the_record(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    """A Chat of the user's and parallel_chat are the notebook's spend too: in its ledger and,
    after the cell, in the record (no session turn carries it there)."""
    server.reset()
    nb = notebook_file(tmp_path / "spend.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("spend.ipynb"))
        load(k, server.base_url)
        k.sync()
        server.script(Reply(text="a", usage=usage(20, 5)), Reply(text="b", usage=usage(20, 5)))
        k.ok("import jupyter_llmchat\n"
             f"c = jupyter_llmchat.chat_openai_compatible({server.base_url!r}, model='test-model')\n"
             "c.chat('mine')\n"
             "jupyter_llmchat.parallel_chat_text(c, ['many'], progress=False)")
        assert [(r["turns"], r["input"], r["output"]) for r in k.value(LEDGER)] == [(2, 40, 10)]
        assert fe.record is not None and fe.record["usage"] == k.value(LEDGER)
        assert fe.record["sessions"] == {}


def test_two_notebooks_on_two_kernels_record_independently(tmp_path: Path, server: FakeOpenAIProcess) -> None:
    a, b = notebook_file(tmp_path / "a.ipynb"), notebook_file(tmp_path / "b.ipynb")
    with kernel(a) as ka, kernel(b) as kb:
        fa, fb = ka.attach(FrontEnd("a.ipynb")), kb.attach(FrontEnd("b.ipynb"))
        load(ka, server.base_url)
        load(kb, server.base_url)
        for i in range(3):
            ka.ok(f"%chat a{i}")
            kb.ok(f"%chat b{i}")
        for fe, name in ((fa, "a"), (fb, "b")):
            validate_record(fe.record)
            assert record_texts(fe.record)[0::2] == [
                f"{name}{i}" for i in range(3)]


def test_a_kernel_restart_mid_stream_leaves_a_valid_record(tmp_path: Path, server: FakeOpenAIProcess) -> None:
    nb = notebook_file(tmp_path / "restart.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("restart.ipynb"))
        load(k, server.base_url)
        k.ok("%chat before")
        before = copy.deepcopy(fe.record)
        server.script(Reply(text="slow " * 200, chunk_chars=5, delay=0.05))
        k.kc.execute("%chat a slow one")
        import time

        time.sleep(1.0)  # streaming now
        k.km.restart_kernel(now=True)
        k.kc.wait_for_ready(timeout=60)
        assert fe.record == before  # nothing half-written
        # The new kernel restores from the front end's record (the file was never saved).
        fe.record = copy.deepcopy(before)
        load(k, server.base_url)
        k.sync()
        server.reset()
        k.ok("%chat after")
        validate_record(fe.record)
        texts = record_texts(fe.record)[0::2]
        assert texts == ["before", "after"], texts


def test_run_all_over_200_chat_cells_records_400_turns(tmp_path: Path, server: FakeOpenAIProcess) -> None:
    """Headless Run All (nbclient, no front end): every exchange in the kernel's record, in
    order, and rebuilt the same by ``consolidate`` from the outputs."""
    import json
    import os
    import subprocess
    import sys

    import nbformat
    from nbclient import NotebookClient

    from tests.kernel_frontend import ROOT

    server.reset()
    sources = ["%load_ext jupyter_llmchat", f"%config ChatMagics.base_url = {server.base_url!r}",
               "%config ChatMagics.model = 'test-model'"]
    sources += [f"%%chat\nQuestion {i}" for i in range(200)]
    sources.append("import json, jupyter_llmchat._jupyter._bridge as b\nprint(json.dumps(b.current_bridge().record()))")
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=60, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    (printed,) = [o for o in nb.cells[-1].outputs if o.output_type == "stream"]
    record = json.loads(printed.text)
    validate_record(record)
    turns = record["sessions"]["default"]["turns"]
    assert len(turns) == 400
    assert [t["role"] for t in turns] == ["user", "assistant"] * 200
    assert [t["contents"][0]["text"] for t in turns[0::2]] == [f"Question {i}\n" for i in range(200)]
    assert record["usage"][0]["turns"] == 200
    assert len(server.chat_requests()) == 200
    path = tmp_path / "runall.ipynb"
    nbformat.write(nb, path)
    done = subprocess.run([sys.executable, "-m", "jupyter_llmchat", "consolidate", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(path.read_text(encoding="utf-8"))["metadata"]["jupyter_llmchat"] == record


def test_the_hello_wins_over_the_saved_file_and_keeps_its_order(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    """The file holds A, B; the front end's unsaved record B run again (then B moved above A):
    a kernel that only read the file takes the front end's record whole, in its order, rather
    than keeping the file's older answer because the hello is no append to it (DESIGN §7)."""
    from tests.test_restore import turn

    def record(*exchanges: tuple[str, str, str]) -> dict[str, Any]:
        turns = [t for cell, q, a in exchanges
                 for t in (turn("user", q, cell_id=cell), turn("assistant", a, cell_id=cell))]
        provider = {"name": "OpenAI-compatible", "base_url": "http://127.0.0.1:9/v1",
                    "model": "test-model"}
        return {"version": 1, "usage": [], "sessions": {
            "default": {"provider": provider, "system_prompt": None, "turns": turns}}}

    saved = record(("a", "A?", "a1"), ("b", "B?", "b1"))
    unsaved = record(("b", "B?", "b2"), ("a", "A?", "a1"))
    nb = notebook_file(tmp_path / "x.ipynb", saved)
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("x.ipynb", unsaved, hello=False))
        load(k, server.base_url)
        assert record_texts(k.value(RECORD)) == ["A?", "a1", "B?", "b1"]
        fe.say_hello()
        k.sync()
        assert record_texts(k.value(RECORD)) == ["B?", "b2", "A?", "a1"]
        assert record_texts(fe.record) == ["B?", "b2", "A?", "a1"]
