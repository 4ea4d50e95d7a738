"""Model text made safe to render as trusted Markdown (DESIGN §9).

The rule exists twice, in Python (``_markdown.safe_markdown``) and in TypeScript for the panel
(``labextension/src/safeMarkdown.ts``): the tables below are checked on both sides, the
TypeScript through node on the built extension. The number formatters' table is
``tests/format_cases.json`` (``tests/test_format_cases.py``), run the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jupyter_llmchat._core._markdown import safe_markdown

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "labextension" / "lib"

WJ = "\u2060"

#: (model text, the Markdown that is published for it)
CASES: list[tuple[str, str]] = [
    ("Plain **bold** and a [link](https://example.org/a_b).",
     "Plain **bold** and a [link](https://example.org/a_b)."),
    ("<script>window.pwned=1</script>", "&lt;script>window.pwned=1&lt;/script>"),
    ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)>"),
    ("<svg onload=alert(1)>", "&lt;svg onload=alert(1)>"),
    ('<iframe srcdoc="<script>x()</script>"></iframe>',
     '&lt;iframe srcdoc="&lt;script>x()&lt;/script>">&lt;/iframe>'),
    ("A &lt; B &amp; C", "A &amp;lt; B &amp;amp; C"),
    ("[click](javascript:alert(1))", "click"),
    ("[click](JaVaScRiPt:alert(1))", "click"),
    ("[click](<javascript:alert(1)>)", "click"),
    ("[click]( javascript\\:alert(1) )", "click"),
    ("[x](vbscript:msgbox) [y](data:text/html,hi)", "x y"),
    ("![cat](http://h/c.png?q=secret)",
     "[cat](http://h/c.png?q=secret) (http://h/c.png?q=secret)"),
    ('![cat](http://h/c.png "title")', "[cat](http://h/c.png) (http://h/c.png)"),
    ("![](http://h/c.png)", "[image](http://h/c.png) (http://h/c.png)"),
    ("![cat](\nhttp://h/c.png)", "[cat](http://h/c.png) (http://h/c.png)"),
    ("![x](javascript:alert(1))", "x"),
    ("![x](data:image/png;base64,AAAA)", "x"),
    ("[![i](http://h/i.png)](http://h/)", "[[i](http://h/i.png) (http://h/i.png)](http://h/)"),
    ("![a][r]\n\n[r]: http://h/x.png", "\\![a][r]\n\n[r]: http://h/x.png"),
    ("![r]\n\n[r]: http://h/x.png", "\\![r]\n\n[r]: http://h/x.png"),
    ("\\![a][r]", "\\![a][r]"),
    ("\\\\![a][r]", "\\\\\\![a][r]"),
    ("[r]: javascript:alert(1)", f"[r]: javascript{WJ}:alert(1)"),
    ("data: 5 rows", "data: 5 rows"),
    ("Use `<b>` or `a < b`.", "Use `<b>` or `a < b`."),
    ("`x | <img src=x onerror=1> | `", "`x | &lt;img src=x onerror=1> | `"),
    ("\\`<b>`", "\\`&lt;b>`"),
    ("```html\n<b>bold</b>\n![i](http://h/i.png)\n```\nafter <i>",
     "```html\n<b>bold</b>\n![i](http://h/i.png)\n```\nafter &lt;i>"),
    ("```python\nprint('<open fence>')", "```python\nprint('<open fence>')\n```"),
    ("~~~\n<b>\n~~~", "~~~\n<b>\n~~~"),
    ("```\r\n<b>\r\n```\r\n<i>", "```\r\n<b>\r\n```\r\n&lt;i>"),
    # An indented fence may belong to a list item that ends it: its content is escaped.
    ("- item\n  ```\n  <b>\n<img src=x onerror=1>", "- item\n  ```\n  &lt;b>\n&lt;img src=x onerror=1>"),
    ("| a | b |\n|---|---|\n| <b> | [x](https://h/) |",
     "| a | b |\n|---|---|\n| &lt;b> | [x](https://h/) |"),
    ("[wiki](https://en.wikipedia.org/wiki/Foo_(bar))",
     "[wiki](https://en.wikipedia.org/wiki/Foo_%28bar%29)"),
    ("<https://h/>", "&lt;https://h/>"),
    ("nul \x00 char", "nul \ufffd char"),
    ("line one\r\nline <two>\r\n", "line one\r\nline &lt;two>\r\n"),
]

#: (cost in USD, how every view shows it)
@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:30] for c in CASES])
def test_safe_markdown_cases(text: str, expected: str) -> None:
    assert safe_markdown(text) == expected


HOSTILE = [text for text, _ in CASES] + [
    "<scr<script>ipt>",
    "`a\n<img src=x onerror=1>\n`",
    "**<img src=x onerror=1>**",
    "> quote <svg onload=1>\n> ![q](http://h/q.png)",
    "1. ![one](http://h/1.png)\n2. [two](javascript:2)",
    "[a]([b](javascript:1))",
    "![x](http://h/x.png)![y](http://h/y.png)",
    "!![x](http://h/x.png)",
    "$<img src=x onerror=1>$ and $$\n<b>\n$$",
    "x" * 50 + "[" * 30 + "](" * 30,
]


def _outside_code(md: str) -> str:
    """The parts of ``md`` a renderer parses as Markdown (fenced blocks and code spans removed)."""
    md = re.sub(r"(?ms)^(`{3,}|~{3,}).*?^ {0,3}\1[ \t]*\r?$", "", md)
    return re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", "", md)


@pytest.mark.parametrize("text", HOSTILE, ids=[h[:30] for h in HOSTILE])
def test_no_tag_no_image_no_script_link(text: str) -> None:
    md = _outside_code(safe_markdown(text))
    assert "<" not in md
    assert not re.search(r"(?<!\\)(?:\\\\)*!\[", md)
    assert not re.search(r"(?i)\]\(\s*<?\s*(javascript|vbscript|data):", md)


# -- the same cases through the panel's TypeScript -----------------------------------------------------


def _node_module(name: str, tmp_path: Path) -> Path:
    built = LIB / f"{name}.js"
    node = shutil.which("node")
    if node is None or not built.exists():
        reason = "node is missing" if node is None else f"{built} is not built (npm run build:lib)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    target = tmp_path / f"{name}.mjs"  # the build is ES modules
    target.write_text(built.read_text(encoding="utf-8"), encoding="utf-8")
    return target


def _run_node(module: Path, function: str, inputs: list[object], *, spread: bool = False) -> list[str]:
    """``function`` of each input, in node; ``spread``: each input is a list of arguments."""
    call = f"{function}(...x)" if spread else f"{function}(x)"
    script = (
        f"import {{ {function} }} from {json.dumps(module.as_uri())};"
        "let data = ''; process.stdin.on('data', d => data += d);"
        f"process.stdin.on('end', () => process.stdout.write(JSON.stringify(JSON.parse(data).map(x => {call}))));"
    )
    done = subprocess.run(["node", "--input-type=module", "-e", script], input=json.dumps(inputs),
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_typescript_port_gives_the_same_markdown(tmp_path: Path) -> None:
    module = _node_module("safeMarkdown", tmp_path)
    inputs = [text for text, _ in CASES] + HOSTILE
    assert _run_node(module, "safeMarkdown", inputs) == [safe_markdown(t) for t in inputs]
