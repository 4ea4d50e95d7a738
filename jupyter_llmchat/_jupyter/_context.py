"""Kernel context for prompts: bounded summaries of values (``--with``) and the last error.

Pure functions, no IPython: the magics hand in the values and the traceback. A summary is
bounded in size (``max_tokens``, estimated as characters / 4) whatever the value's size, and
its cost is bounded too: frames, series and arrays are summarised from a bounded head
(``ROW_LIMIT`` rows) plus cheap O(1) facts (shape, dtypes), so a 10-million-row frame costs
the same prompt and about the same time as a small one. pandas, polars and numpy are imported
only when a value of theirs is given (found by its type's module, not by importing them).

Attached text is data the user chose to send, so it goes into the user message inside a
clearly delimited fenced block; nothing in it, nor in the model's answer, is ever executed.
"""

from __future__ import annotations

import linecache
import math
import os
import reprlib
import sys
import sysconfig
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = [
    "Attachment",
    "ErrorContext",
    "attach",
    "estimate_tokens",
    "error_context",
    "fix_prompt",
    "summarize",
]

#: Rows (or elements) a summary computes on, at most: bounded work whatever the value's size.
ROW_LIMIT = 100_000
#: Rows shown as a sample, columns listed, items of a container shown.
SAMPLE_ROWS = 5
MAX_COLUMNS = 40
MAX_ITEMS = 10
MAX_ITEM_CHARS = 200


def estimate_tokens(text: str) -> int:
    """A rough token count, about four characters per token (no tokenizer needed)."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class Attachment:
    """One kernel value, summarised for the model."""

    name: str
    kind: str  # e.g. "pandas.DataFrame"
    text: str
    cut: bool = False

    @property
    def chars(self) -> int:
        return len(self.text)

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.text)

    def block(self) -> str:
        """The attachment as it goes into the user message: a fenced block headed by its name."""
        fence = "`" * max(3, _longest_backtick_run(self.text) + 1)
        return f"[attached value `{self.name}`: {self.kind}]\n{fence}text\n{self.text}\n{fence}"


def _longest_backtick_run(text: str) -> int:
    best = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        best = max(best, run)
    return best


def attach(prompt: str, attachments: Sequence[Attachment]) -> str:
    """The user message: the prompt, then each attachment as a delimited block."""
    if not attachments:
        return prompt
    blocks = "\n\n".join(a.block() for a in attachments)
    return f"{prompt.rstrip()}\n\n{blocks}"


def describe_attachments(attachments: Sequence[Attachment]) -> str:
    """One quiet line for the cell's output: what was attached and its size."""
    parts = []
    for a in attachments:
        cut = ", cut" if a.cut else ""
        parts.append(f"{a.name} ({a.kind}, {a.chars:,} chars ~ {a.tokens:,} tokens{cut})")
    return "attached: " + "; ".join(parts)


# -- summaries ---------------------------------------------------------------------------------


def summarize(name: str, value: Any, max_tokens: int = 2000) -> Attachment:
    """A compact summary of ``value``, at most about ``max_tokens`` tokens long."""
    kind = _kind(value)
    try:
        text = _summary(value, kind)
    except Exception as exc:  # a value whose methods raise still gets a one-line summary
        text = f"{kind} (summary failed: {type(exc).__name__}: {_short(str(exc), 200)})"
    limit = max(16, int(max_tokens) * 4)
    cut = len(text) > limit
    if cut:
        note = f"\n... (cut to about {max_tokens} tokens)"
        text = text[: max(0, limit - len(note))].rstrip() + note
    return Attachment(name, kind, text, cut)


def _kind(value: Any) -> str:
    t = type(value)
    module = t.__module__.split(".")[0]
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


def _summary(value: Any, kind: str) -> str:
    module = type(value).__module__.split(".")[0]
    cls = type(value).__name__
    if module == "pandas" and cls == "DataFrame":
        return _pandas_frame(value)
    if module == "pandas" and cls == "Series":
        return _pandas_series(value)
    if module == "polars" and cls == "DataFrame":
        return _polars_frame(value)
    if module == "polars" and cls == "Series":
        return _polars_frame(value.to_frame())
    if module == "numpy" and cls == "ndarray":
        return _numpy_array(value)
    if isinstance(value, str):
        return f"str of {len(value):,} characters:\n{_short(value, 2000)}"
    if isinstance(value, (bytes, bytearray)):
        return f"{kind} of {len(value):,} bytes: {_short(repr(value[:200]), 400)}"
    if isinstance(value, Mapping):
        items = []
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                break
            items.append(f"  {_short(_repr(k), 80)}: {_short(_repr(v), MAX_ITEM_CHARS)}")
        more = "\n  ..." if len(value) > MAX_ITEMS else ""
        return f"{kind} with {len(value):,} items:\n" + "\n".join(items) + more
    if isinstance(value, (list, tuple, set, frozenset)) or (
        isinstance(value, Sequence) and hasattr(value, "__len__")
    ):
        seq = list(value)[:MAX_ITEMS] if isinstance(value, (set, frozenset)) else value[:MAX_ITEMS]
        lines = [f"  {_short(_repr(v), MAX_ITEM_CHARS)}" for v in seq]
        more = "\n  ..." if len(value) > MAX_ITEMS else ""
        return f"{kind} of length {len(value):,}:\n" + "\n".join(lines) + more
    return f"{kind}: {_short(_repr(value), 2000)}"


_REPR = reprlib.Repr()
_REPR.maxstring = MAX_ITEM_CHARS
_REPR.maxother = 2000
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = MAX_ITEMS


def _repr(value: Any) -> str:
    # reprlib bounds containers and strings; other objects' own repr is cut afterwards.
    return _REPR.repr(value)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pandas_frame(df: Any) -> str:
    # pandas itself is not imported: the frame's own methods do everything (and pandas has no
    # type stubs here).
    rows, ncols = df.shape
    head = df.iloc[:ROW_LIMIT]
    lines = [f"pandas.DataFrame: {rows:,} rows x {ncols:,} columns"]
    lines.append("columns (dtype):")
    for col, dtype in list(df.dtypes.items())[:MAX_COLUMNS]:
        lines.append(f"  {_short(str(col), 80)}: {dtype}")
    if ncols > MAX_COLUMNS:
        lines.append(f"  ... and {ncols - MAX_COLUMNS:,} more")
    lines.append(f"first {min(SAMPLE_ROWS, rows)} rows:")
    lines.append(df.iloc[:SAMPLE_ROWS, :MAX_COLUMNS].to_string(max_cols=20, max_colwidth=40))
    numeric = head.iloc[:, :MAX_COLUMNS].select_dtypes("number")
    if numeric.shape[1]:
        scope = "all rows" if rows <= ROW_LIMIT else f"first {ROW_LIMIT:,} rows"
        stats = numeric.agg(["count", "mean", "std", "min", "max"]).T
        lines.append(f"numeric summary ({scope}):")
        lines.append(stats.to_string(float_format=lambda v: f"{v:.4g}"))
    return "\n".join(lines)


def _pandas_series(s: Any) -> str:
    return _pandas_frame(s.to_frame()).replace("pandas.DataFrame", "pandas.Series", 1)


def _polars_frame(df: Any) -> str:
    import polars as pl

    rows, ncols = df.shape
    lines = [f"polars.DataFrame: {rows:,} rows x {ncols:,} columns", "columns (dtype):"]
    for col, dtype in list(df.schema.items())[:MAX_COLUMNS]:
        lines.append(f"  {_short(str(col), 80)}: {dtype}")
    if ncols > MAX_COLUMNS:
        lines.append(f"  ... and {ncols - MAX_COLUMNS:,} more")
    with pl.Config(tbl_rows=SAMPLE_ROWS, tbl_cols=20, fmt_str_lengths=40, tbl_width_chars=160):
        lines.append(f"first {min(SAMPLE_ROWS, rows)} rows:")
        lines.append(str(df.head(SAMPLE_ROWS).select(df.columns[:MAX_COLUMNS])))
        head = df.head(ROW_LIMIT).select(df.columns[:MAX_COLUMNS])
        numeric = [c for c, t in head.schema.items() if t.is_numeric()]
        if numeric:
            scope = "all rows" if rows <= ROW_LIMIT else f"first {ROW_LIMIT:,} rows"
            lines.append(f"numeric summary ({scope}):")
            stats = head.select(numeric).describe()
            with pl.Config(tbl_rows=20):
                lines.append(str(stats))
    return "\n".join(lines)


def _numpy_array(a: Any) -> str:
    import numpy as np

    lines = [f"numpy.ndarray: shape {a.shape}, dtype {a.dtype}, {a.size:,} elements"]
    flat = a.reshape(-1)[:ROW_LIMIT] if a.size else a.reshape(-1)
    if flat.size and (np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)):
        scope = "" if a.size <= ROW_LIMIT else f" (first {ROW_LIMIT:,} elements)"
        with np.errstate(all="ignore"):
            if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
                nans = int(np.isnan(flat).sum())
                lo, hi = (np.nanmin(flat), np.nanmax(flat)) if nans < flat.size else (np.nan, np.nan)
                lines.append(f"min {lo}, max {hi}, mean {np.nanmean(flat) if nans < flat.size else np.nan}, "
                             f"NaN {nans:,}{scope}")
            else:
                lines.append(f"min {flat.min()}, max {flat.max()}{scope}")
    with np.printoptions(threshold=20, edgeitems=3, precision=4, linewidth=120):
        sample = a if a.size <= 20 else a[tuple(slice(0, 3) for _ in a.shape)] if a.ndim else a
        lines.append("values:" if a.size <= 20 else "first values:")
        lines.append(_short(np.array2string(sample), 2000))
    return "\n".join(lines)


# -- the last error ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorContext:
    """The kernel's last exception, reduced to what helps fix it."""

    type_name: str
    message: str
    frames: list[str]  # "file:line in func" + the line, the user's own frames only
    cell_source: str | None

    def text(self) -> str:
        lines = ["Traceback (your code only):"] if self.frames else []
        lines += self.frames
        lines.append(f"{self.type_name}: {self.message}" if self.message else self.type_name)
        return "\n".join(lines)


def _library_dirs() -> tuple[str, ...]:
    dirs = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.update({sys.prefix, sys.base_prefix, sys.exec_prefix})
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs if d)


def error_context(
    exc: BaseException | None,
    tb: TracebackType | None,
    *,
    is_cell: Callable[[str], bool],
    cell_name: Callable[[str], str] = lambda f: f,
    max_frames: int = 12,
) -> ErrorContext | None:
    """Reduce an exception to its type, message, the user's frames and the raising cell's source.

    ``is_cell(filename)`` says whether a code object came from a notebook cell (the shell knows);
    frames from the standard library, site-packages and the interpreter's prefix are left out.
    """
    if exc is None:
        return None
    libs = _library_dirs()
    frames: list[str] = []
    cell_file: str | None = None
    summary = traceback.extract_tb(tb) if tb is not None else []
    for fr in summary:
        cell = is_cell(fr.filename)
        if not cell:
            real = os.path.realpath(fr.filename)
            if fr.filename.startswith("<") or real.startswith(libs):
                continue
        where = cell_name(fr.filename) if cell else fr.filename
        frames.append(f'  {where}, line {fr.lineno}, in {fr.name}')
        if fr.line:
            frames.append(f"    {fr.line.strip()}")
        if cell:
            cell_file = fr.filename
    if isinstance(exc, SyntaxError) and exc.filename and is_cell(exc.filename):
        cell_file = exc.filename
    if len(frames) > 2 * max_frames:
        frames = frames[:max_frames] + ["  ..."] + frames[-max_frames:]
    source = "".join(linecache.getlines(cell_file)) if cell_file else None
    message = _short(str(exc), 2000)
    return ErrorContext(_kind(exc), message, frames, source or None)


def fix_prompt(err: ErrorContext, max_source_chars: int = 8000) -> str:
    """The message ``%chat_fix`` sends: the cell, the error, and what to answer."""
    parts = [
        "This notebook cell raised an error. Explain the cause briefly, then give the whole "
        "fixed cell as one Python code block."
    ]
    if err.cell_source:
        src = err.cell_source.rstrip("\n")
        if len(src) > max_source_chars:
            src = src[:max_source_chars] + "\n# ... (cell cut)"
        fence = "`" * max(3, _longest_backtick_run(src) + 1)
        parts.append(f"The cell:\n{fence}python\n{src}\n{fence}")
    err_text = err.text()
    fence = "`" * max(3, _longest_backtick_run(err_text) + 1)
    parts.append(f"The error:\n{fence}text\n{err_text}\n{fence}")
    return "\n\n".join(parts)
