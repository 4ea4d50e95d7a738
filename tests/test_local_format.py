"""The bundled model's conversation format: which examples a prompt shows, and what it may not show.

Pure functions of ``_llama_server`` (no server runs here); the answers themselves are measured by
benchmarks/bench_local_quality.py and the real-model tests."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

pytest.importorskip("llama_cpp")

from jupyter_llmchat._local import _llama_server as server  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_local_quality", ROOT / "benchmarks" / "bench_local_quality.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


#: Keywords that name a kind of thing rather than a fact (the two definition questions): an
#: example may use these words without answering anything.
DESCRIPTIVE = {"programming", "language", "notebook", "code", "document", "interactive"}


def test_no_example_is_a_measured_question_or_answers_one() -> None:
    bench = _bench()
    measured = bench.QUESTIONS + bench.HELD_OUT  # type: ignore[attr-defined]
    measured += [(q, k) for _, q, k in bench.FOLLOW_UPS]  # type: ignore[attr-defined]
    assert len(measured) >= 40
    bank_questions = {q.lower() for q, _ in server.BANK}
    for question, keywords in measured:
        assert question.lower() not in bank_questions
        facts = [k for k in keywords if k not in DESCRIPTIVE]
        follow_up = server.FOLLOW_UP_EXAMPLE
        for example_q, example_a in [*server.BANK, (follow_up[0], follow_up[1]), (follow_up[2], follow_up[3])]:
            assert not bench.on_topic(example_a, facts), (question, example_a)  # type: ignore[attr-defined]
            assert not bench.on_topic(example_q, facts), (question, example_q)  # type: ignore[attr-defined]


def test_examples_fit_the_kind_of_question() -> None:
    counts = server.pick_examples("How many moons does Mars have?")
    assert len(counts) == server.N_EXAMPLES
    assert counts[-1][0].startswith("How many")  # the closest, next to the question
    assert sum(q.startswith("How many") for q, _ in counts) == 3

    people = server.pick_examples("Who composed the Four Seasons?")
    assert people[-1][0].startswith("Who")

    greeting = server.pick_examples("Hello!")
    assert greeting[-1] == ("Hello!", "Hello! How can I help you today?")


def test_a_question_sharing_no_word_gets_the_defaults() -> None:
    picked = server.pick_examples("zyzzyva qwxq?")
    assert picked == tuple(server.BANK[i] for i in reversed(server.DEFAULT_EXAMPLES))
    # A request is always among them: without one the model echoes requests back.
    assert any(not q.endswith("?") for q, _ in picked)


def test_the_prompt_grows_at_its_end_from_the_second_question_on() -> None:
    # Examples picked for the first question, so each turn's prompt begins with the last one's
    # and llama.cpp reuses what it has evaluated (the second question adds the follow-up example).
    ant = user("How many legs does an ant have?")
    first = server.format_prompt([ant])
    second = server.format_prompt([ant, {"role": "assistant", "content": "Six."}, user("And a spider?")])
    third = server.format_prompt(
        [ant, {"role": "assistant", "content": "Six."}, user("And a spider?"),
         {"role": "assistant", "content": "Eight."}, user("Who wrote Hamlet?")]
    )  # fmt: skip
    assert first.startswith(second.split("User: What is a library?")[0])
    assert third.startswith(second)
    assert third.endswith("User: And a spider?\nAssistant: Eight.\n\nUser: Who wrote Hamlet?\nAssistant:")


def test_a_follow_up_is_shown_an_example_that_refers_back() -> None:
    one = server.format_prompt([user("What is the capital of France?")])
    two = server.format_prompt(
        [user("What is the capital of France?"), {"role": "assistant", "content": "Paris."}, user("And of Italy?")]
    )
    follow_up = "\n".join(
        f"{'User:' if i % 2 == 0 else 'Assistant:'} {t}" for i, t in enumerate(server.FOLLOW_UP_EXAMPLE)
    )
    assert follow_up not in one and follow_up in two
    # Just before the conversation, whose exchanges end with a blank line like the examples'.
    assert two.endswith(
        f"{follow_up}\n\nUser: What is the capital of France?\nAssistant: Paris.\n\nUser: And of Italy?\nAssistant:"
    )


def test_system_prompt_and_history_are_mapped_in() -> None:
    prompt = server.format_prompt(
        [{"role": "system", "content": "Answer in French."}, user("Hi"),
         {"role": "assistant", "content": "Bonjour !\n\nÇa va ?"}, user("Thanks")]
    )  # fmt: skip
    head, _, rest = prompt.partition("\n\n")
    assert head == f"{server.INSTRUCTION}\nInstructions for the Assistant: Answer in French."
    # A message's own blank lines would end the exchange early: kept as single newlines.
    assert rest.endswith("User: Hi\nAssistant: Bonjour !\nÇa va ?\n\nUser: Thanks\nAssistant:")


def test_fixed_examples_from_a_format_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "EXAMPLES", None)
    monkeypatch.setattr(server, "INSTRUCTION", server.INSTRUCTION)
    spec = tmp_path / "format.json"
    spec.write_text('{"instruction": "Be brief.", "examples": [["Q1?", "A1."]]}', encoding="utf-8")
    server.load_format(str(spec))
    assert server.pick_examples("How many legs does a spider have?") == (("Q1?", "A1."),)
    assert server.format_prompt([user("Hi")]).startswith("Be brief.\n\nUser: Q1?\nAssistant: A1.\n\nUser: Hi")
