"""Kernel context for prompts: bounded summaries of values (``--with``) and the last error.

Pure functions, no IPython: the magics hand in the values and the traceback. A summary is
bounded in size (``max_tokens``, estimated as characters / 4) whatever the value's size, and
its cost is bounded too: frames, series and arrays are summarised from a bounded head
(``ROW_LIMIT`` rows) plus cheap O(1) facts (shape, dtypes), so a 10-million-row frame costs
the same prompt and about the same time as a small one. pandas, polars and numpy are imported
only when a value of theirs is given (found by its type's module, not by importing them).

A value with an ``_ai_repr_()`` method (the Jupyter pre-proposal for representations meant for
models: a str, or a dict of MIME type to content) is summarised by it, bounded like any other;
one that raises or returns something unusable gets the normal summary, with a note saying so.

``fingerprint(value)`` digests the value's content for the replay key (DESIGN §3): what the
summary shows is not enough (``df.loc[500, "name"] = "Mallory"`` changes no summary). Data up
to ``EXACT_LIMIT`` (64 MB) is hashed exactly; above it a deterministic sample of rows (or
chunks) plus the shape is, and the fingerprint says it was sampled.

Attached text is data the user chose to send, so it goes into the user message inside a
clearly delimited fenced block; nothing in it, nor in the model's answer, is ever executed.
"""

from __future__ import annotations

import hashlib
import json
import linecache
import os
import pickle
import re
import reprlib
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .._core._spend import CHARS_PER_TOKEN, estimate_tokens

__all__ = [
    "Attachment",
    "ErrorContext",
    "Fingerprint",
    "attach",
    "error_context",
    "fingerprint",
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


@dataclass(frozen=True)
class Attachment:
    """One kernel value, summarised for the model."""

    name: str
    kind: str  # e.g. "pandas.DataFrame"
    text: str
    cut: bool = False
    #: The value's content digest, when ``summarize(..., fingerprint=True)`` computed it.
    fingerprint: Fingerprint | None = None

    @property
    def chars(self) -> int:
        return len(self.text)

    @property
    def tokens(self) -> int:
        return estimate_tokens(len(self.text))

    def content_key(self) -> str:
        """What the replay key holds of this value: the summary the model reads and the digest
        of its content (the summary alone when the content could not be read)."""
        fp = None if self.fingerprint is None else self.fingerprint.digest
        raw = json.dumps([self.kind, self.text, fp], ensure_ascii=False)
        return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]

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
        if a.fingerprint is not None and a.fingerprint.sampled:
            cut += ", sampled for the replay key"
        parts.append(f"{a.name} ({a.kind}, {a.chars:,} chars ~ {a.tokens:,} tokens{cut})")
    return "attached: " + "; ".join(parts)


# -- summaries ---------------------------------------------------------------------------------


def summarize(name: str, value: Any, max_tokens: int = 2000, *, fingerprint: bool = False) -> Attachment:
    """A compact summary of ``value``, at most about ``max_tokens`` tokens long: its
    ``_ai_repr_()`` when it has one, else the summary of its type. ``fingerprint``: also digest
    its content (``Attachment.fingerprint``) for the replay key."""
    kind = _kind(value)
    limit = max(16, int(max_tokens) * CHARS_PER_TOKEN)
    text, note = _ai_text(value, limit)
    if text is None:
        try:
            text = _summary(value, kind)
        except Exception as exc:  # a value whose methods raise still gets a one-line summary
            text = f"{kind} (summary failed: {type(exc).__name__}: {_short(str(exc), 200)})"
        if note:
            text = f"({note}; the usual summary follows)\n{text}"
    cut = len(text) > limit
    if cut:
        note = f"\n... (cut to about {max_tokens} tokens)"
        text = text[: max(0, limit - len(note))].rstrip() + note
    fp = _fingerprint_or_none(value) if fingerprint else None
    return Attachment(name, kind, text, cut, fp)


#: MIME types an ``_ai_repr_`` bundle is read from, in this order; then any other text-like one.
AI_REPR_MIME = ("text/plain", "text/markdown")


def _ai_text(value: Any, limit: int) -> tuple[str | None, str]:
    """``value._ai_repr_()`` as text (cut to ``limit``), or None and why not ("" if it has none)."""
    if isinstance(value, type):
        return None, ""  # a class: its _ai_repr_ is an unbound method of its instances
    try:
        method = getattr(value, "_ai_repr_", None)
    except Exception:  # noqa: BLE001 - a __getattr__ that raises: no _ai_repr_
        return None, ""
    if not callable(method):
        return None, ""
    try:
        got = method()
    except Exception as exc:  # noqa: BLE001 - the user's code: its failure is said, not raised
        return None, f"its _ai_repr_() raised {type(exc).__name__}: {_short(str(exc), 200)}"
    text = _ai_bundle_text(got)
    if text is None:
        return None, f"its _ai_repr_() returned {_short(_kind(got), 80)}, not text or a MIME bundle with text"
    return text[: limit + 1], ""  # one more than the limit, so summarize says it was cut


def _ai_bundle_text(got: Any) -> str | None:
    if isinstance(got, str):
        return got
    if not isinstance(got, Mapping):
        return None
    keys = [k for k in got if isinstance(k, str)]
    textual = [k for k in keys if k.startswith("text/") or k == "application/json" or k.endswith("+json")]
    for key in [*[m for m in AI_REPR_MIME if m in got], *textual]:
        content = got[key]
        if isinstance(content, list) and all(isinstance(x, str) for x in content):
            content = "".join(content)  # nbformat's multi-line form
        if isinstance(content, str):
            return content
        if key.endswith("json"):
            try:
                return json.dumps(content, ensure_ascii=False, default=str)[: 4 * 2**20]
            except (TypeError, ValueError, RecursionError):
                continue
    return None


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


# -- content fingerprints (the replay key) -----------------------------------------------------

#: Data up to this size is hashed exactly; a larger value is sampled.
EXACT_LIMIT = 64 * 2**20
#: About how much of a sampled value is hashed, in chunks spread over it (the first and last
#: included), and how many rows (or elements, or bytes) a chunk holds at least.
SAMPLE_BYTES = 8 * 2**20
CHUNK_ROWS = 1024
#: Containers: items walked at most (a sample of them above), and the depth walked.
MAX_FINGERPRINT_ITEMS = 100_000
MAX_FINGERPRINT_DEPTH = 20
_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")


@dataclass(frozen=True)
class Fingerprint:
    """A digest of a value's content; ``str(fp)`` is the digest. ``sampled``: a part of it was
    too large to hash exactly, so a change outside the rows sampled may go unseen (``note``)."""

    digest: str
    sampled: bool = False
    note: str = ""

    def __str__(self) -> str:
        return self.digest


class _Digest:
    """One walk over a value: the hash, the exact budget left, and what was sampled."""

    def __init__(self, budget: int) -> None:
        self.h = hashlib.sha256()
        self.budget = self.limit = budget
        #: About how much of one sampled value is hashed (less under a small limit).
        self.sample_bytes = min(SAMPLE_BYTES, max(CHUNK_ROWS, budget // 8))
        self.notes: list[str] = []
        self.stack: list[Any] = []  # containers being walked (a cycle is hashed as a mark)

    def tag(self, *parts: Any) -> None:
        self.h.update(repr(parts).encode("utf-8", "surrogatepass") + b"\x00")

    def data(self, buf: Any) -> None:
        mv = memoryview(buf).cast("B")
        self.h.update(mv)
        self.budget -= mv.nbytes

    def sample(self, what: str, nbytes: int, hashed: str) -> None:
        self.notes.append(f"{what}: {nbytes / 2**20:,.0f} MB, over the {self.limit / 2**20:,.4g} MB "
                          f"hashed exactly; {hashed} were hashed")


def fingerprint(value: Any, *, exact_limit: int = EXACT_LIMIT) -> Fingerprint:
    """A digest of ``value``'s content, for the replay key: the same in another kernel for the
    same data, different when any of it changes (up to ``exact_limit`` bytes hashed exactly;
    above that a deterministic sample plus the shape, and ``sampled`` is set).

    numpy arrays: dtype, shape and buffer; pandas and polars frames and series: columns, dtypes,
    index and each column's values; str and bytes; containers walked (bounded); other objects:
    their attributes, their pickle, or their repr without addresses."""
    d = _Digest(exact_limit)
    _walk(d, value, 0)
    return Fingerprint(d.h.hexdigest()[:32], bool(d.notes), "; ".join(d.notes))


def _fingerprint_or_none(value: Any) -> Fingerprint | None:
    try:
        return fingerprint(value)
    except Exception:  # noqa: BLE001 - a value that cannot be read: the key uses its summary
        return None


def _walk(d: _Digest, value: Any, depth: int) -> None:
    t = type(value)
    module = t.__module__.split(".")[0]
    cls = t.__name__
    if value is None or isinstance(value, (bool, int, float, complex, range)):
        d.tag(cls, repr(value))
    elif isinstance(value, str):
        _fp_bytes(d, "str", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _fp_bytes(d, cls, bytes(value) if isinstance(value, memoryview) else value)
    elif module == "numpy" and cls == "ndarray":
        _fp_numpy(d, value, depth)
    elif module == "pandas" and cls in ("DataFrame", "Series"):
        _fp_pandas(d, value if cls == "DataFrame" else value.to_frame(), cls)
    elif module == "pandas" and cls.endswith("Index"):
        _fp_pandas(d, value.to_frame(index=False), cls)
    elif module == "polars" and cls in ("DataFrame", "Series"):
        _fp_polars(d, value if cls == "DataFrame" else value.to_frame(), cls)
    elif depth >= MAX_FINGERPRINT_DEPTH or any(value is s for s in d.stack):
        d.tag("deep" if depth >= MAX_FINGERPRINT_DEPTH else "cycle", _kind(value))
    elif isinstance(value, Mapping):
        d.stack.append(value)
        d.tag(_kind(value), len(value))
        for k, v in _bounded(d, list(value.items()), _kind(value)):
            _walk(d, k, depth + 1)
            _walk(d, v, depth + 1)
        d.stack.pop()
    elif isinstance(value, (set, frozenset)):
        # Their order changes with the process's string hashing: hash the items' digests sorted.
        d.stack.append(value)
        items = list(value)
        digests = []
        for item in _bounded(d, items, _kind(value)):
            sub = _Digest(max(0, d.budget))
            sub.limit, sub.sample_bytes, sub.stack = d.limit, d.sample_bytes, d.stack
            _walk(sub, item, depth + 1)
            d.budget = min(d.budget, sub.budget)
            d.notes += sub.notes
            digests.append(sub.h.hexdigest())
        d.tag(_kind(value), len(items), *sorted(digests))
        d.stack.pop()
    elif isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and hasattr(value, "__len__")):
        d.stack.append(value)
        d.tag(_kind(value), len(value))
        for item in _bounded(d, value, _kind(value)):
            _walk(d, item, depth + 1)
        d.stack.pop()
    else:
        _fp_object(d, value, depth)


def _bounded(d: _Digest, items: Sequence[Any], what: str) -> Iterable[Any]:
    """All of ``items``, or a spread sample of them when there are too many to walk."""
    n = len(items)
    starts = _starts(n, MAX_FINGERPRINT_ITEMS // CHUNK_ROWS, CHUNK_ROWS)
    if starts is None:
        return items
    d.notes.append(f"{what} of {n:,} items: {len(starts) * CHUNK_ROWS:,} of them were hashed")
    return (items[i] for s in starts for i in range(s, s + CHUNK_ROWS))


def _starts(n: int, chunks: int, size: int) -> list[int] | None:
    """Starts of ``chunks`` runs of ``size`` spread over ``range(n)``, the first and the last
    run included, the same for the same ``n`` (so the same data gives the same sample); None
    when they would cover it all."""
    chunks = max(2, chunks)
    if chunks * size >= n:
        return None
    return sorted({round(i * (n - size) / (chunks - 1)) for i in range(chunks)})


def _positions(n: int, row_bytes: int, sample_bytes: int) -> Any:
    """Rows to hash of ``n`` rows of about ``row_bytes`` each: about ``sample_bytes`` of them,
    in runs; None when that is all of them."""
    import numpy as np

    size = max(1, min(CHUNK_ROWS, n))
    starts = _starts(n, sample_bytes // (max(1, row_bytes) * size), size)
    if starts is None:
        return None
    return (np.asarray(starts)[:, None] + np.arange(size)).reshape(-1)


def _fp_bytes(d: _Digest, kind: str, raw: bytes | bytearray) -> None:
    n = len(raw)
    d.tag(kind, n)
    if n <= d.budget:
        d.data(raw)
        return
    chunk = max(CHUNK_ROWS, d.sample_bytes // 64)
    starts = sorted({round(i * (n - chunk) / 63) for i in range(64)})
    for s in starts:
        d.data(raw[s:s + chunk])
    d.sample(kind, n, f"{len(starts)} chunks of {chunk:,} bytes and the length")


def _fp_numpy(d: _Digest, a: Any, depth: int) -> None:
    import numpy as np

    d.tag("ndarray", a.dtype.str, a.dtype.descr if a.dtype.fields else None, a.shape)
    if a.dtype.hasobject:
        d.stack.append(a)
        for item in _bounded(d, a.reshape(-1), "numpy object array"):
            _walk(d, item, depth + 1)
        d.stack.pop()
        return
    if a.nbytes <= d.budget or a.ndim == 0:
        d.data(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        return
    # Runs of elements in memory order (C order: whole rows where rows are small).
    flat = a.reshape(-1)
    picks = _positions(flat.size, a.itemsize, d.sample_bytes)
    if picks is None:
        d.data(np.ascontiguousarray(flat).view(np.uint8))
        return
    d.data(np.ascontiguousarray(flat[picks]).view(np.uint8))
    d.sample("numpy array", a.nbytes, f"{picks.size:,} of its {flat.size:,} elements (in runs), "
             "its dtype and shape")


def _frame_bytes(df: Any) -> int:
    """A pandas frame's size, cheaply: its buffers, plus the strings of object columns estimated
    from the first rows (a deep count would read every string)."""
    shallow = int(df.memory_usage(index=True, deep=False).sum())
    rows = len(df)
    # object columns, and pandas' string dtypes ("str" from pandas 3 on, "string[...]").
    if rows == 0 or not any(str(dt) in ("object", "str") or str(dt).startswith("string") for dt in df.dtypes):
        return shallow
    head = df.iloc[:1000]
    deep, flat = (int(head.memory_usage(index=True, deep=d).sum()) for d in (True, False))
    extra = deep - flat
    return shallow + extra * rows // len(head)


def _fp_pandas(d: _Digest, df: Any, kind: str) -> None:
    import numpy as np
    import pandas as pd

    rows = len(df)
    d.tag("pandas", kind, df.shape, [repr(c) for c in df.columns], [str(t) for t in df.dtypes],
          [repr(n) for n in df.index.names], str(df.index.dtype), repr(df.columns.names))
    nbytes = _frame_bytes(df)
    picks = _positions(rows, nbytes // max(1, rows), d.sample_bytes) if nbytes > d.budget else None
    sampled = picks is not None
    if sampled:
        df = df.iloc[picks]
    index = df.index
    if isinstance(index, pd.RangeIndex):
        d.tag("range", index.start, index.stop, index.step)
    else:
        d.data(pd.util.hash_pandas_object(index, index=False, categorize=False).to_numpy())
    for i in range(df.shape[1]):
        col = df.iloc[:, i]
        if isinstance(col.dtype, np.dtype) and col.dtype != object:
            # Plain numbers (or dates): their bytes, which is what hashing them would read.
            d.data(np.ascontiguousarray(col.to_numpy()).view(np.uint8))
        else:
            # categorize=False: factorizing first is far slower for mostly distinct strings.
            d.data(pd.util.hash_pandas_object(col, index=False, categorize=False).to_numpy())
    if sampled:
        d.sample(f"pandas {kind}", nbytes, f"{len(df):,} of its {rows:,} rows (in chunks), its "
                 "index, columns, dtypes and shape")


def _fp_polars(d: _Digest, df: Any, kind: str) -> None:
    import polars as pl

    rows = df.height
    d.tag("polars", kind, df.shape, [(n, str(t)) for n, t in df.schema.items()])
    nbytes = int(df.estimated_size())
    starts = None
    if nbytes > d.budget:
        starts = _starts(rows, d.sample_bytes // (max(1, nbytes // max(1, rows)) * CHUNK_ROWS), CHUNK_ROWS)
    sampled = starts is not None
    if starts is not None:
        df = pl.concat([df.slice(s, CHUNK_ROWS) for s in starts])
    for name in df.columns:
        # polars' own hash (a fixed seed: stable within a polars version), nulls included.
        d.data(df.get_column(name).hash(seed=0).to_numpy())
    if sampled:
        d.sample(f"polars {kind}", nbytes, f"{df.height:,} of its {rows:,} rows (in chunks), "
                 "its schema and shape")


class _Capped:
    """A file for ``pickle.dump`` that hashes what it is given and stops past the budget."""

    def __init__(self, d: _Digest) -> None:
        self.d = d
        self.total = 0

    def write(self, b: Any) -> int:
        n = memoryview(b).nbytes
        self.total += n
        if self.total > self.d.budget:
            raise _TooLarge
        self.d.data(b)
        return n


class _TooLarge(Exception):
    pass


def _fp_object(d: _Digest, value: Any, depth: int) -> None:
    t = type(value)
    attrs = getattr(value, "__dict__", None)
    # Pickled as its __dict__ anyway: walk that instead (a custom reduce or state is pickled).
    plain = isinstance(attrs, dict) and all(
        getattr(t, m, None) is getattr(object, m, None) for m in ("__reduce_ex__", "__reduce__", "__getstate__"))
    if plain:
        # Its attributes, walked like a dict (a pickle of them would follow set order).
        d.stack.append(value)
        d.tag("object", _kind(value))
        _walk(d, dict(attrs), depth + 1)  # type: ignore[arg-type]
        d.stack.pop()
        return
    d.tag("pickle", _kind(value))
    start = d.budget
    try:
        pickle.dump(value, _Capped(d), protocol=5)
        return
    except _TooLarge:
        d.sample(_kind(value), start, "the start of its pickle")
        return
    except Exception:  # noqa: BLE001 - unpicklable: its repr, without addresses, stands in
        d.budget = start
    d.tag("repr", _ADDRESS.sub("", _short(repr(value), 1_000_000)))


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
