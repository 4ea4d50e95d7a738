"""``%load_ext`` restores sessions from the notebook's record, and treats that record as hostile.

A real IPython shell (terminal flavour: no kernel, so no comm) pointed at a notebook file the
way a kernel is: ``__session__`` in its namespace (ipykernel sets it from ``JPY_SESSION_NAME``),
or ``JPY_SESSION_NAME`` itself. A record that fails validation costs one warning and nothing
else: no session, no crash, the file untouched. A valid one comes back turn for turn, and its
texts are only ever shown escaped.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from html.parser import HTMLParser
from typing import Any

import mistune
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.testing import globalipapp

from jupyter_llmchat import _sessions
from jupyter_llmchat._jupyter import _bridge
from tests.fake_openai import FakeOpenAI, Reply

SCRIPT = "<script>alert('x')</script>"
SCHEMA = Path(__file__).resolve().parents[1] / "jupyter_llmchat" / "schema" / "metadata-v1.json"


def turn(role: str, text: str, **extra: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"role": role, "contents": [{"type": "text", "text": text}],
                         "cell_id": "c1", "source": "cell", "started_at": "2026-01-02T03:04:05+00:00",
                         "duration_s": None}
    if role == "assistant":
        t.update(model="test-model", tokens={"input": 100, "output": 10, "cached": None},
                 cost_usd=None, finish_reason="stop", partial=False, duration_s=0.5)
    t.update(extra)
    return t


def valid_record() -> dict[str, Any]:
    """Two sessions; the default one holds markup and a script in its texts."""
    provider = {"name": "OpenAI-compatible", "base_url": "http://127.0.0.1:9/v1", "model": "test-model"}
    return {
        "version": 1,
        "sessions": {
            "default": {
                "provider": provider,
                "system_prompt": f"Be terse {SCRIPT}",
                "turns": [
                    turn("user", f"Explain {SCRIPT} and <img src=x onerror=alert(1)>"),
                    turn("assistant", f"It runs code: {SCRIPT}\n\n```html\n{SCRIPT}\n```",
                         tokens={"input": 1200, "output": 30, "cached": 4}),
                    turn("user", "Thanks"),
                    turn("assistant", "**You're welcome.**", tokens={"input": 1300, "output": 5, "cached": None}),
                ],
            },
            "other": {
                "provider": provider,
                "system_prompt": None,
                "turns": [turn("user", "Hi"), turn("assistant", "Hello")],
            },
        },
        "usage": [{"provider": "OpenAI-compatible", "model": "test-model", "turns": 3,
                   "input": 2600, "output": 45, "cached": 4, "cost_usd": None}],
    }


def notebook(record: Any) -> dict[str, Any]:
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}, "jupyter_llmchat": record},
            "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "source": "%load_ext jupyter_llmchat",
                       "outputs": [], "execution_count": None}]}


# -- hostile records --------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the valid record: the value at a dotted path (numbers index lists)."""

    def mutate(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = record
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value

    return mutate


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "version-2": _set("version", 2),
    "version-missing": lambda r: r.pop("version"),
    "version-string": _set("version", "1"),
    "sessions-list": _set("sessions", [SCRIPT]),
    "session-name-script": lambda r: r["sessions"].update({SCRIPT: r["sessions"]["other"]}),
    "session-not-object": _set("sessions.other", SCRIPT),
    "turns-object": _set("sessions.default.turns", {"0": turn("user", SCRIPT)}),
    "turn-not-object": _set("sessions.default.turns.2", SCRIPT),
    "roles-out-of-order": _set("sessions.default.turns.1.role", "user"),
    "role-system": _set("sessions.default.turns.0.role", "system"),
    "contents-string": _set("sessions.default.turns.0.contents", SCRIPT),
    "content-html-type": _set("sessions.default.turns.1.contents", [{"type": "html", "html": SCRIPT}]),
    "text-number": _set("sessions.default.turns.0.contents.0.text", 42),
    "tokens-strings": _set("sessions.default.turns.1.tokens", {"input": "1200", "output": 3, "cached": 0}),
    "tokens-bool": _set("sessions.default.turns.1.tokens", {"input": True, "output": 3, "cached": 0}),
    "tokens-negative": _set("sessions.default.turns.1.tokens", {"input": -1, "output": 3, "cached": 0}),
    "cost-negative": _set("sessions.default.turns.1.cost_usd", -0.5),
    "cost-string": _set("sessions.default.turns.1.cost_usd", "0.5"),
    "cost-nan": _set("sessions.default.turns.1.cost_usd", math.nan),
    "cost-infinite": _set("sessions.default.turns.1.cost_usd", math.inf),
    "duration-negative": _set("sessions.default.turns.1.duration_s", -3),
    "duration-nan": _set("sessions.default.turns.1.duration_s", math.nan),
    "started-at-garbage": _set("sessions.default.turns.0.started_at", SCRIPT),
    "finish-reason-object": _set("sessions.default.turns.1.finish_reason", {"x": SCRIPT}),
    "system-prompt-number": _set("sessions.default.system_prompt", 7),
    "provider-string": _set("sessions.default.provider", SCRIPT),
    "base-url-list": _set("sessions.default.provider.base_url", [SCRIPT]),
    "usage-object": _set("usage", {"rows": SCRIPT}),
    "usage-row-string": _set("usage.0", SCRIPT),
    "usage-input-float": _set("usage.0.input", 1.5),
    "usage-cost-nan": _set("usage.0.cost_usd", math.nan),
    "huge-turns": _set("sessions.default.turns", [turn("user", SCRIPT), turn("assistant", "x")] * 60_000),
    "huge-text": _set("sessions.default.turns.0.contents.0.text", SCRIPT * 300_000),
    "huge-usage": _set("usage", [{"provider": "p", "model": f"m{i}"} for i in range(5_000)]),
    "record-string": lambda r: SCRIPT,
    "record-list": lambda r: [r],
}


@pytest.fixture
def ip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[InteractiveShell]:
    """A shell without the extension, no sessions and no bridge; all put back afterwards."""
    globalipapp.start_ipython()
    shell = globalipapp.get_ipython()
    if "jupyter_llmchat" in shell.extension_manager.loaded:
        shell.run_line_magic("unload_ext", "jupyter_llmchat")
    saved = (
        dict(_sessions.registry.sessions), list(_sessions.registry.hooks), dict(_sessions.registry.bridges), _sessions.registry.factory
    )
    _sessions.registry.sessions.clear()
    _sessions.registry.hooks.clear()
    _sessions.registry.bridges.clear()  # one bridge per shell, made at the first %load_ext: make it again
    for name in ("JPY_SESSION_NAME", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    shell.user_ns.pop("__session__", None)
    monkeypatch.chdir(tmp_path)
    yield shell
    if "jupyter_llmchat" in shell.extension_manager.loaded:
        shell.run_line_magic("unload_ext", "jupyter_llmchat")
    shell.user_ns.pop("__session__", None)
    # load(via="JPY_SESSION_NAME") sets it outright: kernels of later tests must not inherit it
    # (they would restore this test's notebook).
    os.environ.pop("JPY_SESSION_NAME", None)
    _sessions.registry.sessions.clear()
    _sessions.registry.sessions.update(saved[0])
    _sessions.registry.hooks[:] = saved[1]
    _sessions.registry.bridges.clear()
    _sessions.registry.bridges.update(saved[2])
    _sessions.set_factory(saved[3])


def write_notebook(path: Path, record: Any, raw: str | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(notebook(record), indent=1)
    path.write_text(text, encoding="utf-8")
    return path.read_bytes()


def load(shell: InteractiveShell, path: Path, via: str = "__session__") -> list[warnings.WarningMessage]:
    """Point the shell at the notebook, ``%load_ext``, return the warnings it raised."""
    if via == "__session__":
        shell.user_ns["__session__"] = str(path)
    else:
        import os

        os.environ["JPY_SESSION_NAME"] = str(path)
    gc.collect()  # what earlier tests left for the collector must not warn in here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shell.run_line_magic("load_ext", "jupyter_llmchat")
    return caught


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_record_is_ignored_with_one_warning(
    ip: InteractiveShell, tmp_path: Path, case: str
) -> None:
    record = valid_record()
    replaced = HOSTILE[case](record)  # mutates the record in place, or returns a replacement
    if case.startswith("record-"):
        record = replaced
    path = tmp_path / "hostile.ipynb"
    before = write_notebook(path, record)
    mtime = path.stat().st_mtime_ns

    caught = load(ip, path)

    assert [w.category for w in caught] == [UserWarning], [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert message.startswith("jupyter_llmchat: "), message
    assert len(message) < 400  # a hostile record is not echoed back whole
    assert _sessions.session_names() == []  # nothing restored, not even the valid parts
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    # The magics work: the extension loaded despite the record.
    assert "chat" in ip.magics_manager.magics["cell"]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param(json.dumps({"nbformat": 4, "metadata": [SCRIPT], "cells": []}), id="metadata-list"),
        pytest.param(json.dumps([SCRIPT]), id="notebook-list"),
        pytest.param('{"metadata": {"jupyter_llmchat": ' + _deep(200_000) + "}}", id="deep-nesting"),
        pytest.param('{"metadata": {"jupyter_llmchat": "\\ud800' + "x" * 10 + '"}}', id="lone-surrogate"),
    ],
)
def test_unreadable_notebook_is_one_warning(ip: InteractiveShell, tmp_path: Path, raw: str) -> None:
    path = tmp_path / "broken.ipynb"
    before = write_notebook(path, None, raw=raw)
    caught = load(ip, path)
    assert [w.category for w in caught] == [UserWarning], [str(w.message) for w in caught]
    assert _sessions.session_names() == []
    assert path.read_bytes() == before


def test_no_notebook_no_record_no_warning(ip: InteractiveShell, tmp_path: Path) -> None:
    path = tmp_path / "plain.ipynb"
    write_notebook(path, None, raw=json.dumps({"nbformat": 4, "metadata": {}, "cells": []}))
    assert load(ip, path) == []
    assert _sessions.session_names() == []


@pytest.mark.parametrize("via", ["__session__", "JPY_SESSION_NAME"])
def test_valid_record_is_restored(
    ip: InteractiveShell, tmp_path: Path, fake: FakeOpenAI, via: str
) -> None:
    record = valid_record()
    path = tmp_path / "valid.ipynb"
    before = write_notebook(path, record)

    assert load(ip, path, via=via) == []

    assert _sessions.session_names() == ["default", "other"]
    default = _sessions.session("default")
    got = [t.to_dict() for t in default.get_turns()]
    assert got == record["sessions"]["default"]["turns"]
    other = [t.to_dict() for t in _sessions.session("other").get_turns()]
    assert other == record["sessions"]["other"]["turns"]
    assert default.system_prompt == record["sessions"]["default"]["system_prompt"]
    bridge = _bridge.current_bridge()
    assert bridge is not None
    assert bridge.ledger.to_list() == record["usage"]
    rebuilt = bridge.record()
    assert rebuilt["usage"] == record["usage"]
    assert {n: s["turns"] for n, s in rebuilt["sessions"].items()} == {
        n: s["turns"] for n, s in record["sessions"].items()}
    assert path.read_bytes() == before  # read, never written

    # %chat_usage counts the restored answers.
    report = ip.run_line_magic("chat_usage", "")
    assert "2,500" in repr(report) and "2,500" in report._repr_html_()

    # The next %%chat carries the restored history, once pointed at a server.
    ip.run_line_magic("config", f"ChatMagics.base_url = {fake.base_url!r}")
    ip.run_line_magic("config", "ChatMagics.model = 'test-model'")
    fake.script(Reply(text="Sure."))
    ip.run_cell_magic("chat", "", "One more?")
    sent = [(m["role"], m["content"]) for m in fake.last_body()["messages"]]
    assert sent[0] == ("system", record["sessions"]["default"]["system_prompt"])
    assert [role for role, _ in sent[1:]] == ["user", "assistant"] * 2 + ["user"]
    assert sent[2][1] == record["sessions"]["default"]["turns"][1]["contents"][0]["text"]


def test_an_unreadable_budget_is_never_lifted_and_the_rest_is_restored(
    ip: InteractiveShell, tmp_path: Path, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """DESIGN §6: a one-field typo in the budget keeps the sessions and the ledger, and nothing
    is sent until %chat_budget sets a budget again (one line says so)."""
    from IPython.core.error import UsageError

    import jupyter_llmchat
    from jupyter_llmchat import BudgetExceeded

    record = valid_record()
    record["budget"] = {"usd": "2.00", "tokens": None}
    path = tmp_path / "typo.ipynb"
    before = write_notebook(path, record)

    caught = load(ip, path)

    assert [w.category for w in caught] == [UserWarning], [str(w.message) for w in caught]
    assert "budget could not be read" in str(caught[0].message) and "%chat_budget" in str(caught[0].message)
    assert _sessions.session_names() == ["default", "other"]  # the rest of the record is read
    assert len(_sessions.session("default").get_turns()) == 4
    bridge = _bridge.current_bridge()
    assert bridge is not None and bridge.ledger.to_list() == record["usage"]
    assert bridge.record()["budget"] == record["budget"]  # kept as written, never dropped
    ip.run_line_magic("config", f"ChatMagics.base_url = {fake.base_url!r}")
    ip.run_line_magic("config", "ChatMagics.model = 'test-model'")
    capsys.readouterr()
    ip.run_line_magic("chat_budget", "")
    assert "could not be read" in capsys.readouterr().out
    result = ip.run_cell("%chat hello", store_history=False)
    assert isinstance(result.error_in_exec, UsageError) and "could not be read" in str(result.error_in_exec)
    with pytest.raises(BudgetExceeded, match="could not be read"):
        jupyter_llmchat.session("other").chat("hello")
    assert fake.chat_requests() == []
    ip.run_line_magic("chat_budget", "2")  # set again: requests go out under it
    assert bridge.record()["budget"] == {"usd": 2.0, "tokens": None}
    ip.run_cell("%chat hello", store_history=False)
    assert len(fake.chat_requests()) == 1
    assert path.read_bytes() == before


class _Tags(HTMLParser):
    """The elements and the text of an HTML fragment."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_restored_script_is_shown_escaped(
    ip: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "script.ipynb"
    write_notebook(path, valid_record())
    assert load(ip, path) == []
    # Format as a kernel does (a terminal shell computes text/plain only).
    monkeypatch.setattr(ip.display_formatter, "active_types", list(ip.display_formatter.formatters))

    view = ip.run_line_magic("chat_history", "")
    bundle, _ = ip.display_formatter.format(view)
    assert "text/markdown" in bundle, bundle
    # Rendered as JupyterLab's renderer would (raw HTML passes through Markdown), no element
    # comes from the texts: the script and the image are text, in the page and in the code block.
    rendered = {mime: mistune.html(text) if mime == "text/markdown" else text
                for mime, text in bundle.items() if mime != "text/plain"}
    for mime, html in rendered.items():
        parsed = _Tags(html)
        assert not {"script", "img"} & set(parsed.tags), (mime, html)
        shown = "".join(parsed.text)
        assert shown.count(SCRIPT) >= 3, (mime, shown)  # system prompt, prompt, answer
        assert "<img src=x onerror=alert(1)>" in shown
    assert "<strong>You're welcome.</strong>" in rendered["text/markdown"]  # Markdown is kept
    # Text is text: the plain rendering shows the turns as written.
    assert SCRIPT in bundle["text/plain"]


def test_schema_file_accepts_the_valid_record() -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(valid_record())
    bad = copy.deepcopy(valid_record())
    bad["version"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_a_restored_image_reference_is_sent_as_text(ip: InteractiveShell, tmp_path: Path, fake: FakeOpenAI) -> None:
    """An image the record kept by reference only has no bytes: as an image_url it would make
    the server refuse this request and every later one."""
    record = valid_record()
    record["sessions"]["default"]["turns"][0]["contents"].append(
        {"type": "image", "url": "omitted:sha256:" + "ab" * 32, "bytes": 123456})
    path = tmp_path / "image.ipynb"
    write_notebook(path, record)
    assert load(ip, path) == []
    ip.run_line_magic("config", f"ChatMagics.base_url = {fake.base_url!r}")
    ip.run_line_magic("config", "ChatMagics.model = 'test-model'")
    fake.script(Reply(text="Sure."))
    ip.run_cell_magic("chat", "", "One more?")
    first = fake.last_body()["messages"][1]
    assert isinstance(first["content"], str), first
    assert "image" in first["content"] and "omitted:" not in first["content"]
    assert "image_url" not in json.dumps(fake.last_body())


# -- property: hostile JSON never escapes the validator -------------------------------------------

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from jupyter_llmchat._record._metadata import RecordError, validate_record  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from([SCRIPT, "user", "assistant", "text", "image", "omitted:sha256:x", 1, -1]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["version", "sessions", "usage", "turns", "role", "contents", "type", "text",
                         "url", "default", "provider", "tokens", "input", SCRIPT]) | st.text(max_size=6),
        inner, max_size=4),
    max_leaves=16,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def hostile_records(draw: st.DrawFn) -> Any:
    """Random JSON, or the valid record with one random value put at one random place."""
    if draw(st.booleans()):
        return draw(JSON)
    record = valid_record()
    path = draw(st.sampled_from(_paths(record)))
    if not path:
        return draw(JSON)
    target: Any = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(JSON)
    return record


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=hostile_records())
def test_hostile_json_never_escapes_the_validator(ip: InteractiveShell, tmp_path: Path, record: Any) -> None:
    assume(record is not None)  # no record at all: nothing to refuse
    _sessions.registry.sessions.clear()
    keep = _sessions.use(_sessions.local_chat(), "keep")
    from jupyter_llmchat._core._turns import Turn

    keep.set_turns([Turn.from_dict(turn("user", "hi")), Turn.from_dict(turn("assistant", "there"))])
    before_turns = [t.to_dict() for t in keep.get_turns()]
    path = tmp_path / "prop.ipynb"
    raw = write_notebook(path, record)
    ip.user_ns["__session__"] = str(path)
    try:
        validate_record(record)
        valid = True
    except RecordError:
        valid = False  # nothing else may come out of the validator
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bridge = _bridge.Bridge(ip, None)
        bridge.restore_from_file()
    assert path.read_bytes() == raw
    if not valid:
        assert [w.category for w in caught] == [UserWarning]
        assert bridge.refused is not None
        assert _sessions.session_names() == ["keep"] and _sessions.session("keep") is keep
        assert [t.to_dict() for t in keep.get_turns()] == before_turns
