"""The notebook is the conversation (DESIGN §10), in real kernels: a ``%%chat`` cell continues
the cells above it as the notebook stands, told by JupyterLab's ``cellId``/``deletedCells`` in
each execute request and the front end's ``order`` messages (``tests/kernel_frontend.py``
plays bridge.ts); what the fake server received is what was sent.

- deleting B and re-running C: C no longer sends B's exchange, and is marked stale first;
- re-running the first of six cells keeps six exchanges, in place, and sends one exchange's
  worth of bytes (``replace_exchange``), not the whole record;
- a moved cell moves its exchange; a deleted cell's exchange comes back with an undo;
- replaced and deleted exchanges stay counted in ``%chat_usage --all``;
- with no metadata at all (nbclient, VS Code), the order of first runs stands in.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAIProcess, Reply
from tests.kernel_frontend import FrontEnd, Kernel, kernel, load, notebook_file, record_texts

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

HISTORY = ("print([(t.role, t.text, t.meta.get('cell_id')) for t in "
           "__import__('jupyter_llmchat').session().get_turns()])")
BRIDGE = "__import__('jupyter_llmchat._jupyter._bridge')._jupyter._bridge.current_bridge()"
LEDGER = BRIDGE + ".ledger.to_list()"


def sent(server: FakeOpenAIProcess) -> list[str]:
    """The messages of the last request, as ``role: text``."""
    return [f"{m['role']}: {m['content']}" for m in server.last_body()["messages"]]


def ask(
    k: Kernel, server: FakeOpenAIProcess, cell: str, prompt: str, answer: str, **kw: Any
) -> None:
    server.script(Reply(text=answer))
    k.ok(f"%%chat\n{prompt}", cell=cell, **kw)


def ada_paris(k: Kernel, server: FakeOpenAIProcess) -> None:
    ask(k, server, "A", "My name is Ada", "Hello Ada.")
    ask(k, server, "B", "I live in Paris", "Paris is lovely.")
    ask(k, server, "C", "Where do I live?", "In Paris.")
    assert sent(server) == ["user: My name is Ada\n", "assistant: Hello Ada.",
                            "user: I live in Paris\n", "assistant: Paris is lovely.",
                            "user: Where do I live?\n"]


def test_deleting_b_takes_its_exchange_out_of_what_c_sends(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    server.reset()
    nb = notebook_file(tmp_path / "ada.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("ada.ipynb"))
        load(k, server.base_url)
        ada_paris(k, server)
        assert fe.stale == []
        # B deleted: JupyterLab says so in the next request's metadata (here an unrelated cell).
        k.ok("x = 1", cell="D", deleted=["B"])
        assert fe.stale == ["C"]  # C's answer was made with B above it
        assert "Paris" not in "".join(record_texts(fe.record)[:2])
        before = len(server.chat_requests())
        ask(k, server, "C", "Where do I live?", "I do not know.")
        assert len(server.chat_requests()) == before + 1  # asked again, not replayed
        assert sent(server) == ["user: My name is Ada\n", "assistant: Hello Ada.",
                                "user: Where do I live?\n"]
        assert fe.stale == []
        assert record_texts(fe.record) == ["My name is Ada\n", "Hello Ada.",
                                           "Where do I live?\n", "I do not know."]
        # Undo: B is back in the notebook's order, and so is its exchange, above C.
        fe.order(["A", "B", "C", "D"])
        k.sync()
        assert record_texts(fe.record)[2:4] == ["I live in Paris\n", "Paris is lovely."]
        assert fe.stale == ["C"]
        # Nothing the user asked is dropped from the spend: four requests (11 tokens in each, the
        # fake server's usage), though the conversation shows three exchanges.
        assert sum(row["input"] for row in k.value(LEDGER)) == 4 * 11
        _, msgs = k.execute("%chat_usage --all")
        shown = "".join(m["content"]["data"].get("text/plain", "") for m in msgs
                        if m["msg_type"] in ("display_data", "execute_result"))
        assert "44" in shown, shown


def test_rerunning_the_first_of_six_keeps_six_exchanges(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    server.reset()
    nb = notebook_file(tmp_path / "six.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("six.ipynb"))
        load(k, server.base_url)
        for i in range(6):
            ask(k, server, f"c{i}", f"question {i}", f"answer {i} " + "z" * 300)
        first = len(fe.received)
        ask(k, server, "c0", "question 0, again", "answer 0 again")
        assert sent(server) == ["user: question 0, again\n"]  # nothing above the first cell
        texts = record_texts(fe.record)
        assert len(texts) == 12 and texts[:2] == ["question 0, again\n", "answer 0 again"]
        assert texts[2::2] == [f"question {i}\n" for i in range(1, 6)]
        # One exchange's worth: the replaced exchange travels alone, not the whole record.
        kinds = [d["type"] for d, _ in fe.received[first:]]
        assert "replace_exchange" in kinds and "set_metadata" not in kinds, kinds
        size = next(n for d, n in fe.received[first:] if d["type"] == "replace_exchange")
        assert size < 3000, size
        assert fe.record == k.value(BRIDGE + ".record()")
        # The cells below now stand on another conversation: stale; run, they ask again.
        assert fe.stale == [f"c{i}" for i in range(1, 6)]
        ask(k, server, "c3", "question 3", "answer 3, anew")
        assert sent(server)[0] == "user: question 0, again\n" and len(sent(server)) == 7
        assert fe.stale == ["c1", "c2", "c4", "c5"]  # c3's own answer is fresh
        # A cell moved to the top takes its exchange there, and only its exchange travels: out
        # of its place, into the new one (not the five exchanges it passed).
        first = len(fe.received)
        fe.order(["c5", "c0", "c1", "c2", "c3", "c4"])
        k.sync()
        assert record_texts(fe.record)[0] == "question 5\n"
        moved = [(d, n) for d, n in fe.received[first:] if d["type"] != "stale"]
        assert [(d["type"], d["start"], d["end"], len(d["turns"])) for d, _ in moved] == [
            ("replace_exchange", 10, 12, 0), ("replace_exchange", 0, 0, 2)]
        assert sum(n for _, n in moved) < 3000
        assert fe.record == k.value(BRIDGE + ".record()")


def test_a_cell_inserted_above_goes_between(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    server.reset()
    nb = notebook_file(tmp_path / "insert.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("insert.ipynb"))
        load(k, server.base_url)
        ask(k, server, "A", "first", "one")
        ask(k, server, "C", "third", "three")
        fe.order(["A", "B", "C"])  # B added between them, then run
        ask(k, server, "B", "second", "two")
        assert sent(server) == ["user: first\n", "assistant: one", "user: second\n"]
        assert record_texts(fe.record) == ["first\n", "one", "second\n", "two", "third\n", "three"]
        assert fe.stale == ["C"]


def test_without_metadata_the_order_of_first_runs_stands_in(server: FakeOpenAIProcess) -> None:
    """nbclient and VS Code send no cellId: each run continues the runs before it."""
    server.reset()
    with kernel(None) as k:
        load(k, server.base_url)
        for prompt, answer in [("My name is Ada", "Hello Ada."), ("Where do I live?", "No idea.")]:
            server.script(Reply(text=answer))
            k.ok(f"%%chat\n{prompt}", metadata={})
        assert sent(server) == ["user: My name is Ada\n", "assistant: Hello Ada.",
                                "user: Where do I live?\n"]


def test_with_cell_ids_and_no_order_the_first_runs_stand_in(server: FakeOpenAIProcess) -> None:
    """Cell ids but no notebook order (no file, no front end): a cell's place is its first run;
    a re-run replaces its exchange there and the cells after it stay."""
    server.reset()
    with kernel(None) as k:
        load(k, server.base_url)
        ask(k, server, "Z", "zed", "z1")
        ask(k, server, "Y", "why", "y1")
        ask(k, server, "Z", "zed again", "z2")
        assert sent(server) == ["user: zed again\n"]
        out = k.ok(HISTORY)
        assert out.strip() == str([("user", "zed again\n", "Z"), ("assistant", "z2", "Z"),
                                   ("user", "why\n", "Y"), ("assistant", "y1", "Y")])


def saved_notebook(path: Path, cells: list[str], record: dict[str, Any]) -> Path:
    code = [{"id": c, "cell_type": "code", "source": "%%chat\n...", "metadata": {}, "outputs": [],
             "execution_count": None} for c in cells]
    nb = {"nbformat": 4, "nbformat_minor": 5, "cells": code,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"},
                       "jupyter_llmchat": record}}
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def cell_record(*cells: str) -> dict[str, Any]:
    turns = []
    for c in cells:
        turns += [{"role": role, "contents": [{"type": "text", "text": f"{role[0]} {c}"}],
                   "cell_id": c} for role in ("user", "assistant")]
    provider = {"name": "OpenAI-compatible", "base_url": "http://127.0.0.1:9/v1",
                "model": "test-model"}
    session = {"provider": provider, "system_prompt": None, "turns": turns}
    return {"version": 1, "sessions": {"default": session}, "usage": []}


def test_the_saved_files_order_is_read_at_load(tmp_path: Path, server: FakeOpenAIProcess) -> None:
    """At %load_ext the saved file's cells order the record: B was moved above A and C deleted
    (saved so) before this kernel started."""
    nb = saved_notebook(tmp_path / "saved.ipynb", ["B", "A"], cell_record("A", "B", "C"))
    with kernel(nb) as k:
        load(k, server.base_url)
        texts = [t[1] for t in ast.literal_eval(k.ok(HISTORY).strip())]
        assert texts == ["u B", "a B", "u A", "a A"]


def test_a_file_whose_cells_are_not_the_records_keeps_the_record(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    """A tool that gave every cell a new id must not make every exchange look deleted."""
    nb = saved_notebook(tmp_path / "renumbered.ipynb", ["x1", "x2"], cell_record("A", "B"))
    with kernel(nb) as k:
        load(k, server.base_url)
        texts = [t[1] for t in ast.literal_eval(k.ok(HISTORY).strip())]
        assert texts == ["u A", "a A", "u B", "a B"]


def test_new_survives_a_restart_and_a_cell_leaves_its_session(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    """``--new`` starts the conversation of the cells below it, and the record keeps it: after
    a restart Run All replays all three cells. A cell re-run in another session leaves the
    first, sent as a delta; its spend stays counted."""
    server.reset()
    nb = notebook_file(tmp_path / "new.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("new.ipynb"))
        load(k, server.base_url)
        ask(k, server, "A", "My name is Ada", "Hello Ada.")
        server.script(Reply(text="Paris is lovely."))
        k.ok("%%chat --new\nI live in Paris", cell="B")
        assert sent(server) == ["user: I live in Paris\n"]
        ask(k, server, "C", "What is my name?", "You did not say.")
        assert sent(server) == ["user: I live in Paris\n", "assistant: Paris is lovely.",
                                "user: What is my name?\n"]
        saved = json.loads(json.dumps(fe.record))
        assert saved["sessions"]["default"]["turns"][2].get("new_conversation") is True
        first = len(fe.received)
        server.script(Reply(text="Elsewhere, Ada."))
        k.ok("%%chat -s other\nMy name is Ada", cell="A")
        assert record_texts(fe.record) == ["I live in Paris\n", "Paris is lovely.",
                                           "What is my name?\n", "You did not say."]
        assert record_texts(fe.record, "other") == ["My name is Ada\n", "Elsewhere, Ada."]
        # The exchange left as a delta (the new session came with the whole record, as any does).
        left = [d for d, _ in fe.received[first:] if d["type"] == "replace_exchange"]
        assert [(d["session"], d["start"], d["end"], d["turns"]) for d in left] == [
            ("default", 0, 2, [])]
        assert fe.record == k.value(BRIDGE + ".record()")
        assert sum(row["turns"] for row in k.value(LEDGER)) == 4  # every answer still counted
    nb = saved_notebook(tmp_path / "again.ipynb", ["A", "B", "C"], saved)
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("again.ipynb", saved))
        load(k, server.base_url)
        before = len(server.chat_requests())
        k.ok("%%chat\nMy name is Ada", cell="A")
        k.ok("%%chat --new\nI live in Paris", cell="B")
        k.ok("%%chat\nWhat is my name?", cell="C")
        assert len(server.chat_requests()) == before  # Run All after a restart: all replayed
        ask(k, server, "D", "And where do I live?", "In Paris.")
        assert sent(server)[0] == "user: I live in Paris\n" and len(sent(server)) == 5
