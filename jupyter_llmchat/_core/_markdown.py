"""Model text (and restored records) as Markdown that is safe to render as trusted (DESIGN §9).

JupyterLab trusts a cell's fresh outputs: ``text/markdown`` from the kernel is rendered without
the sanitizer, so it must already be harmless. ``safe_markdown`` keeps the answer's Markdown
(emphasis, lists, tables, links, code) and changes only what could act on its own:

- raw HTML outside code (``<script>``, ``<img onerror>``, ``<svg onload>``, ``<iframe>``...) is
  shown as text: ``&`` and ``<`` become entities, so no tag and no entity survives;
- an image (``![alt](url)``, reference-style ``![alt][ref]``) never loads: an inline image becomes
  a link followed by its URL as text (``[alt](url) (url)``), any other ``![`` loses its ``!``;
- a link to ``javascript:``, ``vbscript:`` or ``data:`` is dropped, its text kept; the same
  schemes anywhere else in a destination position are broken with an invisible word joiner, so
  no URL parser reads them as a scheme.

Code spans (one line, as the renderers agree on those) and fenced blocks opened at the start of
a line are left exactly as they are: renderers show them as text anyway. Anything unclear is
escaped: too much escaping only looks odd, too little would let markup through. A fence left open
is closed, so it cannot swallow what follows.

The panel applies the same rule before its sanitizing renderer:
``labextension/src/safeMarkdown.ts`` is a line-by-line port; keep the two in step
(tests/test_markdown.py holds the shared cases, checked on both sides).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["safe_markdown"]

# A fence opened at column 0 belongs to the top level, so only a closing fence (or the end)
# ends it; an indented one may sit in a list item that ends it silently, so its content is
# escaped like any other text.
_FENCE_OPEN = re.compile(r"^(`{3,}|~{3,})")
_FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*(?:\r\n|\r|\n)?\Z")
_TICKS = re.compile(r"`+")
_DANGEROUS = ("javascript:", "vbscript:", "data:")
# A scheme that could run or embed something, where a URL could start (not "data: 5").
_SCHEME = re.compile(r"(?i)(?<![A-Za-z0-9+.\-])(javascript|vbscript|data)(\\?:)(?=\S)")
_WORD_JOINER = "\u2060"
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")


def safe_markdown(text: str) -> str:
    """``text`` as Markdown that shows HTML as text, loads no image and has no script link."""
    text = text.replace("\x00", "\ufffd")
    out: list[str] = []
    block: list[str] = []
    fence: str | None = None
    for line in _lines(text):
        if fence is not None:
            out.append(line)
            m = _FENCE_CLOSE.match(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        m = _FENCE_OPEN.match(line)
        if m and not (m.group(1)[0] == "`" and "`" in line[m.end():]):
            out.append(_safe_block("".join(block)))
            block.clear()
            fence = m.group(1)
            out.append(line)
            continue
        block.append(line)
    out.append(_safe_block("".join(block)))
    if fence is not None:
        out.append(("" if text.endswith(("\n", "\r")) else "\n") + fence)
    return "".join(out)


def _lines(text: str) -> list[str]:
    """Lines with their endings; only what Markdown calls a line ending splits (not \\f, \\x85...)."""
    return _LINE.findall(text)


def _safe_block(block: str) -> str:
    """Text outside fences: code spans kept, the rest made safe (links may span lines)."""
    if not block:
        return ""
    spans: list[str] = []

    def keep(code: str) -> str:
        spans.append(code)
        return f"\x00{len(spans) - 1}\x00"

    lines = [_hide_code_spans(line, keep) for line in _lines(block)]
    safe = _inline("".join(lines))
    # Whatever "![" is left (reference images) loses its image: "!" escaped, unless it is already.
    safe = re.sub(r"(?<!\\)((?:\\\\)*)!\[", r"\1\\![", safe)
    return _PLACEHOLDER.sub(lambda m: spans[int(m.group(1))], safe)


def _hide_code_spans(line: str, keep: Callable[[str], str]) -> str:
    """Replace the line's code spans by placeholders (``keep`` stores them)."""
    out: list[str] = []
    pos = 0
    while (m := _TICKS.search(line, pos)) is not None:
        close = None
        if m.start() == 0 or line[m.start() - 1] != "\\":
            close = re.compile(r"(?<!`)" + m.group() + r"(?!`)").search(line, m.end())
        # A "|" inside could be a table's cell border, which GFM splits on before code spans.
        if close is not None and "|" not in line[m.end():close.start()]:
            out.append(line[pos:m.start()] + keep(line[m.start():close.end()]))
            pos = close.end()
        else:
            out.append(line[pos:m.end()])
            pos = m.end()
    out.append(line[pos:])
    return "".join(out)


def _inline(s: str) -> str:
    """Links and images rewritten, everything else escaped (placeholders pass through)."""
    out: list[str] = []
    i = 0
    start = 0
    n = len(s)
    while i < n:
        ch = s[i]
        if ch == "\\" and i + 1 < n:
            i += 2
            continue
        if ch != "[":
            i += 1
            continue
        close = _matching_bracket(s, i)
        link = _destination(s, close + 1) if close is not None else None
        if close is None or link is None:
            i += 1
            continue
        dest, end = link
        image = i > 0 and s[i - 1] == "!" and not _escaped(s, i - 1)
        head = s[start:i - 1] if image else s[start:i]
        out.append(_escape(head))
        label = _inline(s[i + 1:close])
        if _is_dangerous(dest):
            out.append(label)
        elif image:
            out.append(f"[{label or 'image'}]({_encode(dest)}) ({_literal(dest)})")
        else:
            out.append(f"[{label}]({_encode(dest)})")
        i = start = end
    out.append(_escape(s[start:]))
    return "".join(out)


def _escaped(s: str, i: int) -> bool:
    """Whether ``s[i]`` is escaped by an odd number of backslashes before it."""
    k = i
    while k > 0 and s[k - 1] == "\\":
        k -= 1
    return (i - k) % 2 == 1


def _matching_bracket(s: str, i: int) -> int | None:
    depth = 0
    k = i
    while k < len(s):
        c = s[k]
        if c == "\\":
            k += 2
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return k
        k += 1
    return None


def _destination(s: str, k: int) -> tuple[str, int] | None:
    """Parse ``(dest "title")`` at ``s[k]``: the destination and the index after ``)``."""
    n = len(s)
    if k >= n or s[k] != "(":
        return None
    k = _skip_space(s, k + 1)
    if k < n and s[k] == "<":
        end = k + 1
        while end < n and s[end] not in "<>\n":
            end += 2 if s[end] == "\\" else 1
        if end >= n or s[end] != ">":
            return None
        dest = s[k + 1:end]
        k = end + 1
    else:
        begin = k
        depth = 0
        while k < n:
            c = s[k]
            if c == "\\" and k + 1 < n:
                k += 2
                continue
            if ord(c) <= 0x20:  # CommonMark: no space or control in a destination
                break
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            k += 1
        dest = s[begin:k]
    k = _skip_space(s, k)
    if k < n and s[k] in "\"'(":
        closer = ")" if s[k] == "(" else s[k]
        k += 1
        while k < n and s[k] != closer:
            k += 2 if s[k] == "\\" else 1
        if k >= n:
            return None
        k = _skip_space(s, k + 1)
    if k >= n or s[k] != ")":
        return None
    return dest, k + 1


def _skip_space(s: str, k: int) -> int:
    newline = False
    while k < len(s) and s[k] in " \t\n\r":
        if s[k] in "\n\r":
            if newline:
                break
            newline = True
        k += 1
    return k


def _is_dangerous(dest: str) -> bool:
    # What a browser would read: backslash escapes undone, blanks and controls dropped.
    url = re.sub(r"(?s)\\(.)", r"\1", dest)
    url = "".join(c for c in url if ord(c) > 0x20).lower()
    return url.startswith(_DANGEROUS)


def _encode(dest: str) -> str:
    """A destination written so that it stays one plain destination and never a tag."""
    dest = re.sub(r"[\x00-\x20]", "", dest)
    for a, b in (("&", "&amp;"), ("<", "%3C"), (">", "%3E"), ("(", "%28"), (")", "%29")):
        dest = dest.replace(a, b)
    return _SCHEME.sub(lambda m: m.group(1) + _WORD_JOINER + m.group(2), dest)


def _literal(s: str) -> str:
    """``s`` shown as itself: Markdown punctuation backslash-escaped, no entity, no tag."""
    s = re.sub(r"[\x00-\x20]+", " ", s)
    s = re.sub(r"([\\`*_\[\]()!#|~>])", r"\\\1", s)
    return s.replace("&", "&amp;").replace("<", "&lt;")


def _escape(s: str) -> str:
    s = s.replace("&", "&amp;").replace("<", "&lt;")
    return _SCHEME.sub(lambda m: m.group(1) + _WORD_JOINER + m.group(2), s)
