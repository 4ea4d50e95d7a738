"""The panel's input side in a real JupyterLab: the notebook budget (shown in the status line,
a question past it refused with its text given back), ``@name`` completion and attachment, and
the model picker filled from the server's ``/models``. Assertions are on what the fake server
received and on what the panel shows.
"""

from __future__ import annotations

import pytest

from tests.browser.harness import NotebookPage
from tests.browser.test_panel_browser import (  # noqa: F401  (fixture)
    dock,
    kernel_turns,
    messages,
    notebook,
    open_panel,
    wait_idle,
    wait_text,
)
from tests.fake_openai import FakeOpenAI, Reply

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def test_budget_in_the_status_line_and_a_question_past_it_refused(
    notebook: NotebookPage, fake_server: FakeOpenAI
) -> None:
    nb, page = notebook, notebook.page
    nb.run_cell("%chat_budget --tokens 100")
    open_panel(nb)
    status = dock(page).locator(".jp-llmchat-status")
    page.wait_for_function(
        "() => document.querySelector('.jp-llmchat-dock .jp-llmchat-status')"
        "?.textContent.includes('token budget 100, left 100')",
        timeout=15_000,
    )
    box = dock(page).locator("textarea").first
    box.click()
    page.keyboard.insert_text("A question past the budget")
    page.keyboard.press("Enter")
    error = dock(page).locator(".jp-llmchat-error")
    error.wait_for()
    assert "token budget of 100" in error.inner_text()
    assert "%chat_budget --tokens N" in (error.get_attribute("title") or "")
    wait_idle(page)
    assert box.input_value() == "A question past the budget"
    assert messages(page) == []
    assert fake_server.chat_requests() == []
    nb.run_cell("%chat_budget 2.5")
    page.wait_for_function(
        "() => document.querySelector('.jp-llmchat-dock .jp-llmchat-status')"
        "?.textContent.includes('budget $2.50, left $2.50')",
        timeout=15_000,
    )
    assert "token budget" in status.inner_text()
    # A budget reads as set, as in the cell (it once read "$0.0013" here); counts as the kernel's.
    nb.run_cell("%chat_budget 0.00125")
    nb.run_cell("%chat_budget --tokens 1234567")
    page.wait_for_function(
        "() => { const t = document.querySelector('.jp-llmchat-dock .jp-llmchat-status')"
        "?.textContent ?? ''; return t.includes('budget $0.00125, left $0.0013')"
        " && t.includes('token budget 1,234,567, left 1,234,567'); }",
        timeout=15_000,
    )


def test_at_name_is_offered_and_its_value_reaches_the_server(
    notebook: NotebookPage, fake_server: FakeOpenAI
) -> None:
    nb, page = notebook, notebook.page
    nb.run_cell("sales_by_region = {'north': 10, 'south': 7}")
    open_panel(nb)
    box = dock(page).locator("textarea").first
    box.click()
    page.keyboard.type("Which is larger in @sales_by")
    option = page.locator(".jp-chat-command-name", has_text="@sales_by_region")
    option.wait_for(timeout=15_000)
    option.click()
    page.keyboard.type("?")
    assert box.input_value() == "Which is larger in @sales_by_region ?"
    fake_server.script(Reply(text="North."))
    page.keyboard.press("Enter")
    wait_text(page, "North.")
    wait_idle(page)
    body = fake_server.last_body()
    content = body["messages"][-1]["content"]
    assert content.startswith("Which is larger in @sales_by_region ?\n\n[attached value `sales_by_region`: dict]")
    assert "'north': 10" in content
    note = dock(page).locator(".jp-llmchat-note")
    assert note.inner_text().startswith("attached: sales_by_region (dict, ")

    # An unknown name: refused, nothing sent, the text back in the input.
    before = len(fake_server.chat_requests())
    box.click()
    page.keyboard.insert_text("And @no_such_thing")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")
    error = dock(page).locator(".jp-llmchat-error")
    error.wait_for()
    assert "'no_such_thing'" in error.inner_text()
    wait_idle(page)
    assert len(fake_server.chat_requests()) == before
    assert box.input_value() == "And @no_such_thing"


def test_model_picker_lists_the_servers_models_and_switching_sends_the_new_one(
    notebook: NotebookPage, fake_server: FakeOpenAI
) -> None:
    nb, page = notebook, notebook.page
    fake_server.models = ["test-model", "bigger-model"]
    open_panel(nb)
    picker = dock(page).locator("select.jp-llmchat-model")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-llmchat-dock select.jp-llmchat-model option')]"
        ".map(o => o.value).join(',') === 'test-model,bigger-model'",
        timeout=15_000,
    )
    assert picker.input_value() == "test-model"
    picker.select_option("bigger-model")
    page.wait_for_function(
        "() => document.querySelector('.jp-llmchat-dock .jp-llmchat-status')"
        "?.textContent.startsWith('bigger-model')",
        timeout=15_000,
    )
    fake_server.script(Reply(text="Hello."))
    box = dock(page).locator("textarea").first
    box.click()
    page.keyboard.insert_text("Hi")
    page.keyboard.press("Enter")
    wait_text(page, "Hello.")
    wait_idle(page)
    assert fake_server.last_body()["model"] == "bigger-model"
    assert kernel_turns(nb)[-1][0] == "assistant"
