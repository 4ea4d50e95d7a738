"""The bundled model's server: llama-cpp-python's app, with a conversation format for a base model.

Run as ``python -m jupyter_llmchat._local._llama_server --model FILE --port N ...`` by ``_local.py``;
never imported by the kernel (it imports llama_cpp, fastapi and uvicorn). What it adds to
llama-cpp-python's own server:

- the chat format ``jupyter-llmchat-base``: the bundled GGUF is the *base* gemma-3-270m (no chat
  template); it follows a plain "User: / Assistant:" transcript with a few example exchanges,
  picked for the question, far better than Gemma's instruction template (figures in
  benchmarks/README.md);
- the usage chunk llama-cpp-python leaves out of streams when ``stream_options.include_usage``
  is asked, counted with the model's own tokenizer (the same numbers a whole answer reports);
- ``GET /extras/jupyter-llmchat/identity``: the token the parent gave in ``$JUPYTER_LLMCHAT_TOKEN``,
  so the parent knows the server answering on its port is its own child;
- ``POST /extras/jupyter-llmchat/fit``: how many of the oldest messages to leave out so that a
  conversation fits the context window, counted exactly;
- it exits when its parent does (SIGKILL included): it watches a pipe whose other end only the
  parent holds, and the parent's pid.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import math
import os
import re
import select
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import llama_cpp
from llama_cpp import llama_chat_format

FORMAT = "jupyter-llmchat-base"
TOKEN_ENV = "JUPYTER_LLMCHAT_TOKEN"
#: For measuring other prompts: a JSON file with the instruction and examples (see load_format).
FORMAT_FILE_ENV = "JUPYTER_LLMCHAT_FORMAT_FILE"
#: Tokens kept free for the answer when a request names no max_tokens.
ANSWER_RESERVE = 512

# -- the conversation format ----------------------------------------------------------------------

# Chosen by measurement (benchmarks/bench_local_quality.py, figures in benchmarks/README.md): a
# one-line instruction and four example exchanges, picked from BANK for the conversation's first
# question (the exchanges whose questions share its rarest words: a "how many" question is shown
# answers that are counts, a "who" question answers that are people, a request answers that do
# what was asked). Three fixed examples answered 16 of the benchmark's 24 questions; picked ones
# answer 19. On 24 held-out questions both score alike (13 and 14): what is left wrong is the
# model's knowledge. None of BANK is a measured question, and no answer in it answers one
# (tests/test_local_format.py).
INSTRUCTION = (
    "Below is a conversation between a User and a helpful, knowledgeable Assistant. "
    "The Assistant answers each question correctly, in one or two short sentences of plain English."
)
#: Example exchanges. Facts put the subject first and the answer last ("The capital of Japan is
#: Tokyo."), so the model reads the question again before it commits to an answer.
BANK: tuple[tuple[str, str], ...] = (
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is the largest hot desert in the world?", "The largest hot desert in the world is the Sahara."),
    ("What is the hottest planet in the solar system?", "The hottest planet in the solar system is Venus."),
    ("What is the tallest animal?", "The tallest animal is the giraffe."),
    ("What is the fastest land animal?", "The fastest land animal is the cheetah."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("How many strings does a violin have?", "A violin has four strings."),
    ("What is the chemical symbol for sodium?", "The chemical symbol for sodium is Na."),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen."),
    ("Who invented the telephone?", "The telephone was invented by Alexander Graham Bell."),
    ("Who was the first person to walk on the Moon?", "The first person to walk on the Moon was Neil Armstrong."),
    ("What language is mainly spoken in Egypt?", "The main language of Egypt is Arabic."),
    ("What is the currency of the United States?", "The currency of the United States is the dollar."),
    ("What color is grass?", "Grass is green."),
    ("What is the opposite of big?", "The opposite of big is small."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("What is a volcano?", "A volcano is an opening in the Earth's crust through which molten rock, ash and gas escape."),
    ("What is a noun?", "A noun is a word that names a person, place or thing."),
    ("What is an API in programming?", "An API is a set of rules that lets one program use the functions of another."),
    ("In one sentence, what is Git?", "Git is a version control system that records the changes made to files over time."),
    ("Name two musical instruments.", "Two musical instruments are the piano and the guitar."),
    ("Give me a synonym for happy.", "A synonym for happy is glad."),
    ('Translate "thank you" into French.', '"Thank you" in French is "merci".'),
    ("Write a Python expression that adds 5 and 4.", "5 + 4"),
    ("Explain in one sentence why leaves change color in autumn.",
     "Leaves change color in autumn because they stop making chlorophyll, the pigment that makes them green."),
    ("Hello!", "Hello! How can I help you today?"),
    ("Thanks!", "You're welcome!"),
)  # fmt: skip
#: How many examples a prompt shows.
N_EXAMPLES = 4
#: Shown when a question shares no word with BANK (least fitting first): a definition, a
#: request, a greeting. Without a request among them the model echoes requests back.
DEFAULT_EXAMPLES = (19, 23, 28)
#: Fixed examples instead of picked ones (load_format, to measure other prompts); None: pick.
EXAMPLES: tuple[tuple[str, str], ...] | None = None
#: Shown once a conversation has a second question: two exchanges, the second referring back.
FOLLOW_UP_EXAMPLE: tuple[str, ...] = (
    "What is a library?",
    "A library is a place where books and other materials are kept for people to read or borrow.",
    "Say that more briefly.",
    "A library lends books.",
)
#: A blank line after each exchange of the history, as after each example. (Without: the same
#: score on the benchmark's follow-ups, and the tour's third answer ran to the limit listing
#: "the Place de la Concorde" again and again.)
HISTORY_BLANK_LINES = True
USER, ASSISTANT = "User:", "Assistant:"
STOP = ["\nUser:", "\n\n", "\nAssistant:"]
# Words that say nothing of a question's kind ("how", "many", "who" do, and are kept).
_STOPWORDS = frozenset(
    "a an the of in on to is are was were be do does did and or for from with by at as it its this that what "
    "which there".split()
)


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _STOPWORDS}


_BANK_WORDS = [_words(q) for q, _ in BANK]
_DOC_FREQ = Counter(w for words in _BANK_WORDS for w in words)


def pick_examples(question: str) -> tuple[tuple[str, str], ...]:
    """The examples a prompt shows for ``question``: BANK's exchanges whose questions share the
    most of its words, rarer words counting more (idf), topped up with DEFAULT_EXAMPLES; the
    closest last, next to the question."""
    if EXAMPLES is not None:
        return EXAMPLES
    asked = _words(question)
    n = len(BANK)
    scores = [
        (sum(math.log((n + 1) / (_DOC_FREQ[w] + 0.5)) for w in asked & words), i)
        for i, words in enumerate(_BANK_WORDS)
    ]  # on a tie, the later exchange of BANK
    chosen = [i for score, i in sorted(scores, reverse=True)[:N_EXAMPLES] if score > 0]
    for i in DEFAULT_EXAMPLES:
        if len(chosen) >= N_EXAMPLES:
            break
        if i not in chosen:
            chosen.append(i)
    return tuple(BANK[i] for i in reversed(chosen))


def _text(content: Any) -> str:
    """A message's text: plain string, or the text parts of a multi-part content."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")).strip() for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def load_format(path: str) -> None:
    """Use another format, to measure it (benchmarks/bench_local_quality.py --examples): a JSON
    file with any of ``"instruction"`` (str), ``"examples"`` (fixed ``[[question, answer], ...]``
    instead of picked ones), ``"follow_up"`` (``[question, answer, question, answer]`` or null)
    and ``"history_blank_lines"`` (true: a blank line after each exchange of the history)."""
    global INSTRUCTION, EXAMPLES, FOLLOW_UP_EXAMPLE, HISTORY_BLANK_LINES
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    INSTRUCTION = str(spec.get("instruction", INSTRUCTION))
    if "examples" in spec:
        EXAMPLES = tuple((str(q), str(a)) for q, a in spec["examples"])
    if "follow_up" in spec:
        FOLLOW_UP_EXAMPLE = tuple(str(t) for t in spec["follow_up"] or ())
    HISTORY_BLANK_LINES = bool(spec.get("history_blank_lines", HISTORY_BLANK_LINES))


def format_prompt(messages: list[dict[str, Any]]) -> str:
    """The transcript the base model continues: instruction, system prompt, examples, history.

    The examples are picked for the conversation's *first* question, so the prompt's beginning
    stays the same from one turn to the next and llama.cpp reuses what it evaluated."""
    system = " ".join(_text(m.get("content")) for m in messages if m.get("role") == "system").strip()
    first = next((_text(m.get("content")) for m in messages if m.get("role") == "user"), "")
    parts = [INSTRUCTION]
    if system:
        # The system prompt is the user's instruction to the assistant: after the house one, so
        # it wins where they differ.
        parts.append(f"Instructions for the Assistant: {system}")
    lines = ["\n".join(parts), ""]
    conversation = [m for m in messages if m.get("role") in ("user", "assistant")]
    for question, answer in pick_examples(first):
        lines += [f"{USER} {question}", f"{ASSISTANT} {answer}", ""]
    if FOLLOW_UP_EXAMPLE and sum(m.get("role") == "user" for m in conversation) > 1:
        # Without it, "Say that again, in five words or fewer." after an answer came back as a
        # copy of an example ("...say that a volcano is an opening in the Earth's crust..."): it
        # shows that a question may refer to the answer before it.
        lines += [f"{USER if i % 2 == 0 else ASSISTANT} {text}" for i, text in enumerate(FOLLOW_UP_EXAMPLE)] + [""]
    for m in conversation:
        label = USER if m.get("role") == "user" else ASSISTANT
        lines.append(f"{label} {_single_paragraph(_text(m.get('content')))}")
        if HISTORY_BLANK_LINES and label == ASSISTANT:
            lines.append("")
    lines.append(ASSISTANT)
    return "\n".join(lines)


def _single_paragraph(text: str) -> str:
    # A blank line ends an exchange in the transcript (and is a stop sequence): keep a message's
    # own paragraphs apart with single newlines.
    return "\n".join(line for line in text.splitlines() if line.strip())


def _formatter(messages: list[dict[str, Any]], **kwargs: Any) -> llama_chat_format.ChatFormatterResponse:
    return llama_chat_format.ChatFormatterResponse(prompt=format_prompt(messages), stop=list(STOP))


# Any: llama-cpp-python's TypedDicts for messages and chunks are narrower than what we pass on.
_base_handler: Any = llama_chat_format.chat_formatter_to_chat_completion_handler(_formatter)  # type: ignore[arg-type]

#: Set per request by the middleware below: did the client ask for a usage chunk?
_include_usage: contextvars.ContextVar[bool] = contextvars.ContextVar("include_usage", default=False)


def prompt_tokens(llama: llama_cpp.Llama, messages: list[dict[str, Any]]) -> int:
    """The prompt's length in tokens, tokenized as the handler does (BOS added)."""
    return len(llama.tokenize(format_prompt(messages).encode("utf-8"), add_bos=True, special=True))


def chat_handler(*, llama: llama_cpp.Llama, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    """llama-cpp-python's formatter handler, plus exact usage for streams and an early context check."""
    n_prompt = prompt_tokens(llama, messages)
    if n_prompt >= llama.n_ctx():
        # llama.cpp's wording, so the server's error handler answers 400 context_length_exceeded
        # (when streaming, the error otherwise surfaces only after the 200 has been sent).
        raise ValueError(f"Requested tokens ({n_prompt}) exceed context window of {llama.n_ctx()}")
    if not kwargs.get("stream"):
        result = _base_handler(llama=llama, messages=messages, **kwargs)
        for choice in result.get("choices", []):
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"] = message["content"].lstrip()  # the space after "Assistant:"
        return result
    return _with_usage(llama, messages, kwargs, n_prompt, _include_usage.get())


def _with_usage(
    llama: llama_cpp.Llama, messages: list[dict[str, Any]], kwargs: dict[str, Any], n_prompt: int, include: bool
) -> Iterator[dict[str, Any]]:
    # Count what the sampler produces: a whole answer's completion_tokens is every sampled token
    # but an end-of-generation one (which ends the answer and is not part of it).
    sampled: list[int] = []
    original = llama.sample

    def counting_sample(*args: Any, **kw: Any) -> int:
        token: int = original(*args, **kw)
        sampled.append(token)
        return token

    llama.sample = counting_sample  # type: ignore[method-assign]
    last: dict[str, Any] | None = None
    started = False
    try:
        for chunk in _base_handler(llama=llama, messages=messages, **kwargs):
            last = chunk
            delta = chunk["choices"][0].get("delta") if chunk.get("choices") else None
            if not started and isinstance(delta, dict) and isinstance(delta.get("content"), str):
                delta["content"] = delta["content"].lstrip()  # the space after "Assistant:"
                started = bool(delta["content"])
                if not started:
                    continue  # nothing left of this piece
            yield chunk
    finally:
        llama.sample = original  # type: ignore[method-assign]
    if include and last is not None:
        vocab = llama._model.vocab
        n_out = sum(1 for t in sampled if not llama_cpp.llama_vocab_is_eog(vocab, t))
        yield {
            "id": last["id"], "object": "chat.completion.chunk", "created": last["created"],
            "model": last["model"], "choices": [],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
        }  # fmt: skip


llama_chat_format.LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(  # type: ignore[no-untyped-call]
    FORMAT, chat_handler, overwrite=True  # type: ignore[arg-type]
)


def fit(llama: llama_cpp.Llama, messages: list[dict[str, Any]], max_tokens: int | None) -> dict[str, Any]:
    """How many of the oldest user/assistant messages to drop so the prompt and answer fit."""
    n_ctx = llama.n_ctx()
    reserve = max_tokens if max_tokens else min(ANSWER_RESERVE, n_ctx // 4)
    system = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    drop = 0
    n = prompt_tokens(llama, messages)
    # Drop whole exchanges (user + assistant) from the front; the last message always stays.
    while n + reserve > n_ctx and drop + 2 < len(rest):
        drop += 2
        n = prompt_tokens(llama, system + rest[drop:])
    return {"drop": drop, "prompt_tokens": n, "n_ctx": n_ctx, "fits": n + reserve <= n_ctx}


# -- the app --------------------------------------------------------------------------------------


class _UsageOption:
    """ASGI middleware: read ``stream_options.include_usage`` (the server's request model drops it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/v1/chat/completions" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnected: let the app see it
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            options = json.loads(body).get("stream_options") or {}
            include = bool(options.get("include_usage")) if isinstance(options, dict) else False
        except (ValueError, AttributeError):
            include = False
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # type: ignore[no-any-return]

        token = _include_usage.set(include)
        try:
            await self.app(scope, replay, send)
        finally:
            _include_usage.reset(token)


def create_app(model: str, alias: str, n_ctx: int, n_threads: int, chat_format: str, token: str) -> Any:
    from fastapi import Body
    from llama_cpp.server import app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    app = server_app.create_app(
        server_settings=ServerSettings(),
        model_settings=[
            ModelSettings(
                model=model, model_alias=alias, n_ctx=n_ctx, n_threads=n_threads,
                chat_format=chat_format, verbose=False,
            )
        ],
    )  # fmt: skip

    def llama() -> llama_cpp.Llama:
        proxy = server_app._llama_proxy
        assert proxy is not None
        return proxy(alias)

    @app.get("/extras/jupyter-llmchat/identity")  # type: ignore[untyped-decorator]
    async def identity() -> dict[str, Any]:
        return {"token": token, "model": alias, "chat_format": chat_format, "n_ctx": n_ctx}

    @app.post("/extras/jupyter-llmchat/fit")  # type: ignore[untyped-decorator]
    async def fit_route(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        from starlette.concurrency import run_in_threadpool

        messages = body.get("messages") or []
        max_tokens = body.get("max_tokens")
        # Tokenizing reads only the vocabulary: no need to wait for a running generation.
        return await run_in_threadpool(fit, llama(), messages, max_tokens if isinstance(max_tokens, int) else None)

    app.add_middleware(_UsageOption)
    return app


# -- lifetime ------------------------------------------------------------------------------------


def watch_parent(fd: int | None, parent: int) -> None:
    """End this process as soon as the parent is gone, however it ended (SIGKILL included).

    The pipe's write end lives only in the parent (it is not inherited by the parent's other
    children), so EOF on ``fd`` means the parent exited; the pid check covers a missing pipe."""

    def run() -> None:
        while True:
            if fd is not None:
                ready, _, _ = select.select([fd], [], [], 1.0)
                if ready and not os.read(fd, 1):
                    break
            else:
                time.sleep(1.0)
            if os.getppid() != parent:
                break
        sys.stderr.write("jupyter_llmchat: parent process gone, local model server exiting\n")
        sys.stderr.flush()
        os._exit(0)

    threading.Thread(target=run, name="parent watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jupyter_llmchat._local._llama_server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n_ctx", type=int, default=4096)
    parser.add_argument("--n_threads", type=int, default=1)
    parser.add_argument("--chat_format", default=FORMAT)
    parser.add_argument("--parent-fd", type=int, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        watch_parent(args.parent_fd, args.parent_pid)
    if os.environ.get(FORMAT_FILE_ENV):
        load_format(os.environ[FORMAT_FILE_ENV])
    import uvicorn

    app = create_app(args.model, args.alias, args.n_ctx, args.n_threads, args.chat_format,
                     os.environ.pop(TOKEN_ENV, ""))  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
