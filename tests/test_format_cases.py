"""One formatter per number shown (STYLE.md "One place per fact"): costs, budgets and token
counts read the same in a cell, ``%chat_usage``, an export and the chat panel.

``tests/format_cases.json`` is the one table of cases. The kernel's formatters are checked on
it here; the panel's TypeScript port (``labextension/src/costFormat.ts``, built to
``labextension/lib``) is run in node on the same table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import jupyter_llmchat
from jupyter_llmchat._core._usage import format_cost, format_limit, format_row_cost, format_tokens
from jupyter_llmchat._jupyter._widget import MODULE_VERSION
from tests.test_markdown import _node_module, _run_node

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, list[list[Any]]] = {
    k: v for k, v in json.loads((Path(__file__).parent / "format_cases.json").read_text()).items()
    if not k.startswith("__")
}

PYTHON = {
    "format_cost": lambda usd: format_cost(usd),
    "format_limit": lambda usd: format_limit(usd),
    "format_row_cost": lambda usd, free: format_row_cost(usd, free=free),
    "format_tokens": lambda n, unknown: format_tokens(n, unknown=unknown),
}
#: The same formatters in costFormat.ts.
TYPESCRIPT = {"format_cost": "formatCost", "format_limit": "formatLimit",
              "format_row_cost": "formatRowCost", "format_tokens": "formatCount"}


def _cases() -> list[tuple[str, list[Any], str]]:
    return [(name, args, out) for name, rows in CASES.items() for args, out in rows]


@pytest.mark.parametrize(("name", "args", "expected"), _cases(),
                         ids=[f"{n}-{a}" for n, a, _ in _cases()])
def test_the_kernel_formats_each_case(name: str, args: list[Any], expected: str) -> None:
    assert PYTHON[name](*args) == expected


def test_every_formatter_has_cases_on_both_sides() -> None:
    assert set(CASES) == set(PYTHON) == set(TYPESCRIPT)


def test_what_json_cannot_hold() -> None:
    assert format_cost(float("nan")) == format_cost(float("inf")) == "n/a"


def test_a_budget_reads_as_set_and_a_cost_rounded() -> None:
    # The case: the panel showed a $0.00125 budget as "$0.0013", a cell as "$0.00125".
    assert format_limit(0.00125) == "$0.00125" and format_cost(0.00125) == "$0.0013"


@pytest.mark.parametrize("name", sorted(TYPESCRIPT))
def test_the_panel_formats_each_case_the_same(name: str, tmp_path: Path) -> None:
    module = _node_module("costFormat", tmp_path)
    rows = CASES[name]
    got = _run_node(module, TYPESCRIPT[name], [args for args, _ in rows], spread=True)
    assert got == [out for _, out in rows]


def test_the_panel_formats_no_number_with_the_browsers_locale() -> None:
    for path in (ROOT / "labextension" / "src").glob("*.ts*"):
        assert "toLocaleString" not in path.read_text(encoding="utf-8"), path.name


def test_the_widget_version_is_the_packages_own() -> None:
    """The ipywidgets module version the kernel asks for is the package's version, and the
    extension registers (tokens.ts) and ships (package.json) that same one."""
    tokens = (ROOT / "labextension" / "src" / "tokens.ts").read_text(encoding="utf-8")
    registered = re.search(r"WIDGET_MODULE_VERSION = '([^']+)'", tokens)
    package = json.loads((ROOT / "labextension" / "package.json").read_text(encoding="utf-8"))
    assert registered is not None
    assert MODULE_VERSION == f"^{jupyter_llmchat.__version__}"
    assert registered.group(1) == package["version"] == jupyter_llmchat.__version__
