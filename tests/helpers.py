"""Small helpers shared by the client's test modules."""

from __future__ import annotations

from typing import Any

from jupyter_llmchat import Chat, Turn, chat_openai_compatible


def new_chat(url: str, **kwargs: Any) -> Chat:
    """A chat on ``url`` with the fake server's model, unless told otherwise."""
    kwargs.setdefault("model", "test-model")
    return chat_openai_compatible(url, **kwargs)


def last(chat: Chat) -> Turn:
    """The chat's last assistant turn (there must be one)."""
    turn = chat.last_turn()
    assert turn is not None
    return turn
