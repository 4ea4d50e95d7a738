"""Summaries of kernel values, the last error, replay keys, the budget rule and the footer.

The pure functions of ``_context`` and ``_spend``; the magics that use them are exercised in a
real IPython shell in test_context_magics.py.
"""

from __future__ import annotations

import sys

import pytest

from jupyter_llmchat._jupyter._context import (
    Attachment,
    attach,
    describe_attachments,
    error_context,
    estimate_tokens,
    fix_prompt,
    summarize,
)
from jupyter_llmchat._core._spend import (
    Budget,
    BudgetExceeded,
    Spent,
    check_budget,
    find_replay,
    footer,
    request_hash,
)
from jupyter_llmchat._core._turns import Tokens, Turn

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
    assert estimate_tokens("abcde") == 2


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


def test_replay_finds_the_exchange_only_when_every_input_matches() -> None:
    past = history()
    h = request_hash("again", past, **KEY)
    u2 = Turn.user("again", meta={"request_hash": h})
    a2 = Turn("assistant", Turn.user("second answer").contents)
    turns = [*past, u2, a2]
    assert find_replay(turns, "again", **KEY) == 2
    assert find_replay(turns, "again!", **KEY) is None
    # A notebook cell looks only at its own recorded exchange.
    assert find_replay(turns, "again", at=2, **KEY) == 2
    assert find_replay(turns, "again", at=0, **KEY) is None
    for k, v in (("model", "other"), ("system_prompt", None), ("params", {"temperature": 1}),
                 ("provider", "Q")):
        assert find_replay(turns, "again", **{**KEY, k: v}) is None, k
    # Another history before it: not the same request.
    changed = [Turn.user("FIRST"), past[1], u2, a2]
    assert find_replay(changed, "again", **KEY) is None
    # A partial answer is never replayed.
    a2.partial = True
    assert find_replay(turns, "again", **KEY) is None


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
    assert footer("g", Tokens(), None, local=True) == "g · n/a in / n/a out · free, local"
    assert footer("m", Tokens(1, 1), 0.5, replayed_at="2026-01-01 10:00 UTC").endswith(
        "· replayed (recorded 2026-01-01 10:00 UTC), no request")
