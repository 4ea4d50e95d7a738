"""Summaries of kernel values, the last error, replay keys, the budget rule and the footer.

The pure functions of ``_context`` and ``_spend``; the magics that use them are exercised in a
real IPython shell in test_context_magics.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from jupyter_llmchat._core._replay import Request, check_replay
from jupyter_llmchat._core._spend import (
    Budget,
    BudgetExceeded,
    Spent,
    check_budget,
    estimate_tokens,
    footer,
    request_hash,
)
from jupyter_llmchat._core._turns import Tokens, Turn
from jupyter_llmchat._jupyter._context import (
    EXACT_LIMIT,
    Attachment,
    attach,
    describe_attachments,
    error_context,
    fingerprint,
    fix_prompt,
    summarize,
)

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")
pl = pytest.importorskip("polars")


def small_frame() -> object:
    return pd.DataFrame({"city": ["Oslo", "Lima", "Pune"], "temp": [3.5, 19.0, 31.2], "n": [1, 2, 3]})


# -- summaries ---------------------------------------------------------------------------------


def test_pandas_frame_summary_has_shape_columns_rows_and_numbers() -> None:
    a = summarize("df", small_frame())
    assert a.kind == "pandas.DataFrame"
    assert "3 rows x 3 columns" in a.text
    for expected in ("city: ", "temp: float64", "n: int64", "Oslo", "Pune", "numeric summary", "mean"):
        assert expected in a.text, expected
    assert not a.cut


def test_a_huge_frame_costs_the_same_bounded_prompt() -> None:
    rows = 1_000_000
    big = pd.DataFrame({"x": np.arange(rows, dtype=float), "y": np.arange(rows) % 7,
                        "s": np.array(["a", "b"])[np.arange(rows) % 2]})
    small = summarize("df", big.head(1000), max_tokens=2000)
    a = summarize("df", big, max_tokens=2000)
    assert "1,000,000 rows x 3 columns" in a.text
    assert "first 100,000 rows" in a.text  # the numeric summary says what it was computed on
    assert len(a.text) <= 2000 * 4
    assert abs(len(a.text) - len(small.text)) < 200


def test_wide_frame_is_cut_to_the_token_bound() -> None:
    wide = pd.DataFrame({f"column_{i}": [i, i + 1] for i in range(500)})
    a = summarize("wide", wide, max_tokens=100)
    assert a.cut and len(a.text) <= 400 and a.tokens <= 100
    assert "500 columns" in a.text and "cut to about 100 tokens" in a.text


def test_series_polars_and_numpy() -> None:
    s = summarize("s", pd.Series([1.0, 2.0, None], name="v"))
    assert s.kind == "pandas.Series" and "pandas.Series: 3 rows" in s.text
    p = summarize("p", pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}))
    assert p.kind == "polars.DataFrame"
    assert "3 rows x 2 columns" in p.text and "a: Int64" in p.text and "mean" in p.text
    arr = summarize("arr", np.array([[1.0, np.nan], [5.0, -2.0]]))
    assert "shape (2, 2), dtype float64" in arr.text and "min -2.0, max 5.0" in arr.text and "NaN 1" in arr.text
    big = summarize("big", np.arange(10_000_000))
    assert "10,000,000 elements" in big.text and "first 100,000 elements" in big.text
    assert len(big.text) < 1000


def test_containers_and_others_are_bounded() -> None:
    lst = summarize("xs", list(range(1000)))
    assert lst.text.startswith("list of length 1,000") and "..." in lst.text and len(lst.text) < 200
    d = summarize("d", {"k": "v" * 10_000, "n": 1})
    assert "dict with 2 items" in d.text and len(d.text) < 400
    s = summarize("t", "x" * 100_000, max_tokens=50)
    assert s.cut and len(s.text) <= 200
    class Thing:
        def __repr__(self) -> str:
            return "<Thing " + "z" * 50_000 + ">"
    o = summarize("o", Thing())
    assert "Thing" in o.kind and len(o.text) <= 2100


def test_a_value_whose_summary_raises_still_gets_one_line() -> None:
    class Bad(list):  # type: ignore[type-arg]
        def __len__(self) -> int:
            raise RuntimeError("no len")
    a = summarize("bad", Bad())
    assert "summary failed: RuntimeError: no len" in a.text


def test_attachment_block_is_delimited_and_fenced_past_the_value_backticks() -> None:
    a = Attachment("code", "str", "x ```` y")
    msg = attach("Look:", [a])
    assert msg.startswith("Look:\n\n[attached value `code`: str]\n`````text\n")
    assert msg.endswith("\n`````")
    assert attach("p", []) == "p"
    assert describe_attachments([a]) == "attached: code (str, 8 chars ~ 2 tokens)"
    assert estimate_tokens(len("abcde")) == 2  # the spend guard's estimate, one for both


# -- the last error ----------------------------------------------------------------------------


def test_error_context_keeps_the_user_frames_and_the_cell() -> None:
    import linecache

    cell = "<test-cell-1>"
    source = "def f(x):\n    return x / 0\nf(1)\n"
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    try:
        try:
            exec(compile(source, cell, "exec"), {})
        except ZeroDivisionError:
            exc_type, exc, tb = sys.exc_info()
        # A library frame is left out: json's decoder, raising from the standard library.
        import json
        try:
            json.loads("{")
        except ValueError as lib_exc:
            lib = error_context(lib_exc, lib_exc.__traceback__, is_cell=lambda f: f == cell)
    finally:
        del linecache.cache[cell]
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    err = error_context(exc, tb, is_cell=lambda f: f == cell, cell_name=lambda f: "Cell In[1]")
    del linecache.cache[cell]
    assert err is not None and err.type_name == "ZeroDivisionError"
    assert err.cell_source == source
    text = err.text()
    assert "Cell In[1], line 2, in f" in text and "return x / 0" in text
    assert "division by zero" in text
    assert lib is not None and "decoder.py" not in "".join(lib.frames) and "test_context.py" in "".join(lib.frames)
    prompt = fix_prompt(err)
    assert "```python\ndef f(x):" in prompt and "ZeroDivisionError: division by zero" in prompt
    assert error_context(None, None, is_cell=lambda f: True) is None


# -- replay keys -------------------------------------------------------------------------------


def history() -> list[Turn]:
    u = Turn.user("first")
    a = Turn("assistant", Turn.user("answer").contents)
    return [u, a]


KEY = {"provider": "P", "model": "m", "system_prompt": "sys", "params": {"temperature": 0}}


def asked(prompt: str, history: list[Turn], **key: Any) -> Request:
    return Request(prompt=prompt, text=prompt, history=history, **{**KEY, **key})


def test_replay_finds_the_exchange_only_when_every_input_matches() -> None:
    past = history()
    h = request_hash("again", past, **KEY)
    u2 = Turn.user("again", meta={"request_hash": h})
    a2 = Turn("assistant", Turn.user("second answer").contents)
    turns = [*past, u2, a2]
    assert check_replay(turns, 2, asked("again", past)).index == 2
    assert check_replay(turns, 2, asked("again!", past)).index is None
    # A notebook cell looks only at its own recorded exchange.
    assert check_replay(turns, 0, asked("again", [])).index is None
    for k, v in (("model", "other"), ("system_prompt", None), ("params", {"temperature": 1}),
                 ("provider", "Q")):
        assert check_replay(turns, 2, asked("again", past, **{k: v})).index is None, k
    # Another history before it: not the same request.
    changed = [Turn.user("FIRST"), past[1], u2, a2]
    assert check_replay(changed, 2, asked("again", changed[:2])).index is None
    # A partial answer is never replayed.
    a2.partial = True
    assert check_replay(turns, 2, asked("again", past)).index is None


def test_request_hash_survives_the_record() -> None:
    u = Turn.user("q", meta={"request_hash": "ab" * 16, "cell_id": "c1"})
    assert Turn.from_dict(u.to_dict()).meta == {"request_hash": "ab" * 16, "cell_id": "c1"}


# -- budget ------------------------------------------------------------------------------------


def test_budget_refuses_when_spent_or_when_the_worst_case_passes() -> None:
    b = Budget(usd=1.0)
    check_budget(b, Spent(usd=0.5), input_tokens=10, max_tokens=10, worst_usd=0.1)
    with pytest.raises(BudgetExceeded, match=r"budget reached: \$1.00 spent of \$1.00.*%chat_budget"):
        check_budget(b, Spent(usd=1.0), input_tokens=10, max_tokens=10, worst_usd=None)
    with pytest.raises(BudgetExceeded, match=r"could cost up to \$0.60.*budget of \$1.00 \(\$0.50 left\)"):
        check_budget(b, Spent(usd=0.5), input_tokens=10, max_tokens=10, worst_usd=0.6)
    # Unknown price: only what was spent can refuse a USD budget.
    check_budget(b, Spent(usd=0.5), input_tokens=10**6, max_tokens=10**6, worst_usd=None)
    t = Budget(tokens=1000)
    check_budget(t, Spent(tokens=500), input_tokens=100, max_tokens=100, worst_usd=None)
    with pytest.raises(BudgetExceeded, match="up to 700 tokens"):
        check_budget(t, Spent(tokens=500), input_tokens=200, max_tokens=500, worst_usd=None)
    with pytest.raises(BudgetExceeded, match="token budget reached"):
        check_budget(t, Spent(tokens=1000), input_tokens=1, max_tokens=1, worst_usd=None)
    check_budget(Budget(), Spent(usd=10**6), input_tokens=1, max_tokens=None, worst_usd=10.0)


def test_budget_round_trips_and_refuses_bad_values() -> None:
    assert Budget.from_dict(Budget(0.5, 100).to_dict()) == Budget(0.5, 100)
    assert Budget.from_dict(None) == Budget()
    for bad in ({"usd": -1}, {"usd": "1"}, {"tokens": 1.5}, {"usd": float("inf")}, [1]):
        with pytest.raises(ValueError):
            Budget.from_dict(bad)


def test_spent_sums_the_ledger_rows() -> None:
    rows = [{"turns": 2, "input": 10, "output": 5, "cost_usd": 0.25},
            {"turns": 3, "input": None, "output": 7, "cost_usd": None}]
    assert Spent.from_rows(rows) == Spent(usd=0.25, tokens=22, unknown_cost=3)


def test_footer() -> None:
    assert footer("m", Tokens(11, 3), None) == "m · 11 in / 3 out · n/a"
    assert footer("m", Tokens(1200, 3), 0.0021) == "m · 1,200 in / 3 out · $0.0021"
    assert footer("g", Tokens(), None, free=True) == "g · n/a in / n/a out · free, local"
    assert footer("m", Tokens(1, 1), 0.5, replayed_at="2026-01-01 10:00 UTC").endswith(
        "· replayed (recorded 2026-01-01 10:00 UTC), no request")


# -- _ai_repr_ ---------------------------------------------------------------------------------


class AiRepr:
    def __init__(self, got: object) -> None:
        self.got = got

    def _ai_repr_(self) -> object:
        if isinstance(self.got, BaseException):
            raise self.got
        return self.got

    def __repr__(self) -> str:
        return "<AiRepr plain repr>"


def test_ai_repr_is_used_when_a_value_has_one() -> None:
    assert summarize("m", AiRepr("a model of 3 layers")).text == "a model of 3 layers"
    bundle = {"image/png": "iVBOR...", "text/markdown": "**md**", "text/plain": "plain text"}
    assert summarize("m", AiRepr(bundle)).text == "plain text"
    assert summarize("m", AiRepr({"image/png": "x", "text/markdown": "**md**"})).text == "**md**"
    # The first text-like entry otherwise (nbformat's list-of-lines form read too).
    assert summarize("m", AiRepr({"image/png": "x", "text/html": ["<b>a</b>", "\n"]})).text == "<b>a</b>\n"
    assert summarize("m", AiRepr({"application/json": {"layers": 3}})).text == '{"layers": 3}'
    assert summarize("m", AiRepr("")).text == ""


def test_ai_repr_is_bounded_like_every_summary() -> None:
    a = summarize("m", AiRepr("word " * 100_000), max_tokens=50)
    assert a.cut and len(a.text) <= 200 and a.text.startswith("word word")


@pytest.mark.parametrize("got, why", [
    (ValueError("no repr today"), "its _ai_repr_() raised ValueError: no repr today"),
    (42, "its _ai_repr_() returned int, not text"),
    ({"image/png": "iVBOR"}, "returned dict, not text or a MIME bundle with text"),
    ({"text/plain": 7}, "returned dict"),
])
def test_an_ai_repr_that_fails_falls_back_to_the_summary_with_a_note(got: object, why: str) -> None:
    a = summarize("m", AiRepr(got))
    assert why in a.text
    assert "the usual summary follows" in a.text and "<AiRepr plain repr>" in a.text


def test_a_class_with_ai_repr_is_not_called_unbound() -> None:
    a = summarize("cls", AiRepr)
    assert "AiRepr" in a.text and "_ai_repr_" not in a.text


# -- fingerprints ------------------------------------------------------------------------------

def names_frame(rows: int = 1000) -> object:
    return pd.DataFrame({"id": np.arange(rows), "name": [f"user{i}" for i in range(rows)],
                         "score": np.linspace(0, 1, rows)})


def test_a_changed_cell_changes_the_fingerprint_but_not_the_summary() -> None:
    df = names_frame()
    before, summary = fingerprint(df), summarize("df", df).text
    df.loc[500, "name"] = "Mallory"
    assert summarize("df", df).text == summary
    after = fingerprint(df)
    assert after.digest != before.digest and not after.sampled and not before.sampled
    df.loc[500, "name"] = "user500"
    assert fingerprint(df) == before  # the same data, the same fingerprint


def test_pandas_fingerprint_covers_index_dtypes_columns_and_values() -> None:
    df = names_frame(100)
    base = fingerprint(df).digest
    assert fingerprint(df.copy()).digest == base
    variants = [
        df.set_axis(np.arange(100) + 1, axis=0),           # index
        df.set_axis(np.arange(100) + 2, axis=0),           # another index of the same type
        df.set_index("name"),                              # a string index
        df.set_index("name").rename(index={"user7": "Mallory"}),
        df.astype({"id": "float64"}),                      # dtype, same numbers
        df.rename(columns={"score": "points"}),            # a column's name
        df.assign(score=df["score"].where(df.index != 99, 0.5)),  # the last value
        df[["name", "id", "score"]],                       # column order
        df.head(99),
    ]
    digests = [fingerprint(v).digest for v in variants]
    assert base not in digests and len(set(digests)) == len(digests)
    s = df["name"]
    assert fingerprint(s).digest != fingerprint(s.rename("other")).digest
    cat = df.astype({"name": "category"})
    assert fingerprint(cat).digest != base


def test_numpy_polars_and_plain_values() -> None:
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    fa = fingerprint(a).digest
    assert fingerprint(a.copy()).digest == fa
    assert fingerprint(a.T.copy()).digest != fa                        # shape
    assert fingerprint(a.astype(np.float64)).digest != fa              # dtype
    assert fingerprint(np.asfortranarray(a)).digest == fa              # layout is not content
    b = a.copy()
    b[2, 3] = -1
    assert fingerprint(b).digest != fa
    p = pl.DataFrame({"x": [1, 2, None], "s": ["a", "b", "c"]})
    fp = fingerprint(p).digest
    assert fingerprint(p.clone()).digest == fp
    assert fingerprint(p.with_columns(pl.col("s").str.replace("b", "B"))).digest != fp
    assert fingerprint(p.fill_null(0)).digest != fp
    assert fingerprint(p["s"]).digest != fingerprint(p["x"]).digest
    for x, y in [("1", b"1"), (1, 1.0), (1, True), ([1, 2], (1, 2)), ({"a": 1}, {"a": 2}),
                 ({1, 2}, {1, 3}), ("a" * 10, "a" * 11)]:
        assert fingerprint(x).digest != fingerprint(y).digest, (x, y)
    assert fingerprint({3, 1, 2}).digest == fingerprint({1, 2, 3}).digest
    huge = fingerprint(range(10**12))  # a range is its bounds, not its items
    assert not huge.sampled and huge != fingerprint(range(10**12 + 1))


class Plain:
    def __init__(self, v: object) -> None:
        self.v = v


class Unpicklable:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __reduce__(self) -> object:
        raise TypeError("no")


def test_objects_by_attributes_pickle_or_repr_without_addresses() -> None:
    assert fingerprint(Plain([1, 2])).digest == fingerprint(Plain([1, 2])).digest
    assert fingerprint(Plain([1, 2])).digest != fingerprint(Plain([1, 3])).digest
    # The default repr holds an address that changes with every object and kernel: left out.
    assert fingerprint(Unpicklable()).digest == fingerprint(Unpicklable()).digest
    loop: list[object] = [1]
    loop.append(loop)
    assert not fingerprint(loop).sampled  # a cycle is marked, not followed


def test_above_the_limit_a_deterministic_sample_is_hashed_and_said() -> None:
    df = names_frame(200_000)
    small = 1 * 2**20
    fp = fingerprint(df, exact_limit=small)
    assert fp.sampled and "pandas DataFrame" in fp.note and "rows" in fp.note
    assert fingerprint(df.copy(), exact_limit=small) == fp
    assert fingerprint(df, exact_limit=small).digest != fingerprint(df).digest
    changed = df.copy()
    changed.loc[0, "name"] = "Mallory"  # the first rows are always in the sample
    assert fingerprint(changed, exact_limit=small).digest != fp.digest
    assert fingerprint(df.head(199_999), exact_limit=small).digest != fp.digest  # the shape
    p = pl.DataFrame({"id": np.arange(200_000), "name": [f"user{i}" for i in range(200_000)],
                      "score": np.linspace(0, 1, 200_000)})
    pfp = fingerprint(p, exact_limit=small)
    assert pfp.sampled and pfp == fingerprint(p.clone(), exact_limit=small)
    assert fingerprint(p, exact_limit=small).digest != fingerprint(p).digest


def test_a_value_over_64_mb_is_sampled_at_the_default_limit() -> None:
    big = np.zeros(EXACT_LIMIT // 8 + 1024)
    fp = fingerprint(big)
    assert fp.sampled and "numpy array: 64 MB" in fp.note
    big[0] = 1
    assert fingerprint(big).digest != fp.digest
    assert not fingerprint(big[:1000]).sampled
    text = "x" * (EXACT_LIMIT + 1)
    assert fingerprint(text).sampled and "str" in fingerprint(text).note


def test_summarize_carries_the_fingerprint_and_says_when_it_was_sampled() -> None:
    df = names_frame(10)
    a = summarize("df", df, fingerprint=True)
    assert a.fingerprint == fingerprint(df)
    assert summarize("df", df).fingerprint is None
    big = summarize("big", np.zeros(EXACT_LIMIT // 8 + 1024), fingerprint=True)
    assert big.fingerprint is not None and big.fingerprint.sampled
    assert "big (numpy.ndarray" in describe_attachments([a, big])
    assert describe_attachments([big]).endswith("sampled for the replay key)")
    assert "sampled" not in describe_attachments([a])


FRESH_KERNEL = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, pandas as pd, polars as pl
from jupyter_llmchat._jupyter._context import fingerprint
df = pd.DataFrame({"id": np.arange(50), "name": [f"user{i}" for i in range(50)]}).set_index("name")
values = [df, pl.DataFrame({"id": np.arange(50), "name": [f"user{i}" for i in range(50)]}), {"tags": {"red", "green", "blue"}, "n": (1, 2.5)},
          np.arange(6).reshape(2, 3), "text"]
print(",".join(fingerprint(v).digest for v in values))
"""


def test_fingerprints_are_the_same_in_another_process() -> None:
    """After a restart (another process, another string-hash seed) the same data gives the same
    key, or replay would never hit."""
    root = str(Path(__file__).resolve().parents[1])
    out = []
    for seed in ("1", "2"):
        r = subprocess.run([sys.executable, "-c", FRESH_KERNEL, root], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120)
        assert r.returncode == 0, r.stderr
        out.append(r.stdout.strip())
    assert out[0] == out[1] and len(out[0].split(",")) == 5
