"""The client against llama.cpp's real server with the real gemma-3-270m model.

The model is tiny and a base model: its wording is odd, so these tests assert protocol facts
(chunks arrive, finish reasons, limits, usage, history sent), never what it says.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from jupyter_llmchat import chat_openai_compatible, params
from jupyter_llmchat._local._model import MODEL_ALIAS, LocalServer

pytestmark = pytest.mark.realmodel

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_model_discovery(local_server: LocalServer) -> None:
    chat = chat_openai_compatible(base_url=local_server.base_url)
    assert chat.get_model() == MODEL_ALIAS


def test_streamed_answer_arrives_in_several_chunks(local_server: LocalServer) -> None:
    chat = chat_openai_compatible(
        base_url=local_server.base_url, params=params(max_tokens=24, temperature=0.7, seed=1)
    )
    chunks = list(chat.stream("Write a short sentence about the sea."))
    assert len(chunks) >= 3
    reply = chat.last_turn()
    assert reply is not None and reply.text == "".join(chunks) and reply.text.strip()
    assert reply.finish_reason in ("stop", "length")
    assert not reply.partial
    # The bundled server sends the usage chunk the client asks for (stream_options.include_usage).
    assert reply.tokens is not None and reply.tokens.input and reply.tokens.output
    assert chat.get_cost() is None  # an unnamed OpenAI-compatible server: price unknown


def test_max_tokens_is_honoured(local_server: LocalServer) -> None:
    chat = chat_openai_compatible(base_url=local_server.base_url, model=MODEL_ALIAS)
    # A limit well below any answer to this (the bundled format keeps answers short).
    chat.chat("Count from one to twenty, in words.", params=params(max_tokens=3))
    reply = chat.last_turn()
    assert reply is not None
    assert reply.finish_reason == "length"
    # Not streamed (echo="none"), so the server reports usage.
    assert reply.tokens is not None and reply.tokens.output == 3
    assert reply.tokens.input is not None and reply.tokens.input > 3


def test_second_request_carries_the_first_turn(local_server: LocalServer) -> None:
    chat = chat_openai_compatible(
        base_url=local_server.base_url, model=MODEL_ALIAS, params=params(max_tokens=16, seed=3)
    )
    chat.chat("My name is Ada.")
    first = chat.last_turn()
    chat.chat("What is my name?")
    second = chat.last_turn()
    assert first is not None and second is not None and first.tokens and second.tokens
    assert first.tokens.input is not None and first.tokens.output is not None
    assert second.tokens.input is not None
    # The second prompt holds the first question and answer, so it is longer than both.
    assert second.tokens.input > first.tokens.input + first.tokens.output
    assert [t.role for t in chat.get_turns()] == ["user", "assistant"] * 2


async def test_async_stream(local_server: LocalServer) -> None:
    chat = chat_openai_compatible(base_url=local_server.base_url, model=MODEL_ALIAS, params=params(max_tokens=12))
    pieces = [p async for p in chat.stream_async("Say hello.")]
    assert pieces and chat.last_turn() is not None


@pytest.mark.kernel
def test_tour_notebook_runs_on_the_embedded_model(local_server: LocalServer, tmp_path: pathlib.Path) -> None:
    """The tour runs top to bottom with no configuration: the kernel starts its own local model."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "01-tour.ipynb", as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY")}
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    answers = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs
        if o.output_type == "display_data" and "jupyter_llmchat" in o.get("metadata", {})
    ]
    assert len(answers) == 3
    for o in answers:
        meta = o.metadata["jupyter_llmchat"]
        assert meta["model"] == MODEL_ALIAS and meta["prompt"]
        assert o.data["text/plain"].strip()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "6 turns;" in printed
