"""``python -m jupyter_llmchat``: the same as the ``jupyter-llmchat`` command."""

from jupyter_llmchat._cli import main

raise SystemExit(main())
