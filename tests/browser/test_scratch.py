import time, json, pytest
from tests.browser.harness import empty_notebook, console_messages
from tests.fake_openai import Reply

@pytest.mark.browser
def test_scratch(jupyter_server, open_notebook, fake_server, page):
    t0 = time.time()
    jupyter_server.put_notebook("s.ipynb", empty_notebook())
    nb = open_notebook("s.ipynb")
    nb.run_cell("%load_ext jupyter_llmchat")
    nb.run_cell(f'%config ChatMagics.base_url = "{fake_server.base_url}"')
    nb.run_cell('%config ChatMagics.model = "test-model"')
    nb.run_cell('%%chat\nQ1')
    nb.run_cell('%%chat\nQ2')
    nb.save()
    nb.restart_kernel()
    print("restarted", time.time()-t0)
    nb.run_cell("%load_ext jupyter_llmchat")
    nb.run_cell(f'%config ChatMagics.base_url = "{fake_server.base_url}"')
    nb.run_cell('%config ChatMagics.model = "test-model"')
    i = nb.run_cell('%chat_usage')
    print("usage", nb.output(i))
    i = nb.run_cell('%%chat\nQ3')
    print("chat3", nb.output(i))
    print([ (m["role"], m["content"]) for m in fake_server.last_body()["messages"]] if fake_server.chat_requests() else None)
    nb.close()
    nb.reopen()
    print("reopened", time.time()-t0)
    i = nb.run_cell('%%chat\nQ4')
    print("chat4", nb.output(i))
    print([ (m["role"], m["content"]) for m in fake_server.last_body()["messages"]])
    print("turns in model", len(nb.metadata()["sessions"]["default"]["turns"]))
    nb.screenshot("scratch.png")
    print(console_messages(page))
