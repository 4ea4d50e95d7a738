"""Images as extra arguments of chat/stream, sent as ``image_url`` parts."""

from __future__ import annotations

import base64
import pathlib
import struct
import sys
import zlib

import pytest

from jupyter_llmchat import (
    ConfigurationError,
    ContentImage,
    content_image_file,
    content_image_plot,
    content_image_url,
)
from tests.fake_openai import FakeOpenAI
from tests.helpers import new_chat


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "mime"),
    [(tiny_png(), "image/png"), (b"\xff\xd8\xff\xe0" + b"\0" * 20, "image/jpeg"),
     (b"GIF89a" + b"\0" * 20, "image/gif"), (b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 20, "image/webp")],
    ids=["png", "jpeg", "gif", "webp"],
)
def test_image_file_becomes_a_data_url(tmp_path: pathlib.Path, data: bytes, mime: str) -> None:
    path = tmp_path / "img.bin"  # recognised by its bytes, not its name
    path.write_bytes(data)
    image = content_image_file(path)
    assert image == ContentImage(f"data:{mime};base64,{base64.b64encode(data).decode()}")


def test_image_file_errors(tmp_path: pathlib.Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(tiny_png() + b"\0" * 2000)
    with pytest.raises(ConfigurationError, match="limit"):
        content_image_file(big, max_bytes=1000)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ConfigurationError, match="not a PNG"):
        content_image_file(text)
    with pytest.raises(ConfigurationError, match="cannot read"):
        content_image_file(tmp_path / "missing.png")


def test_image_url() -> None:
    assert content_image_url("https://example.org/cat.png") == ContentImage("https://example.org/cat.png")
    with pytest.raises(ConfigurationError):
        content_image_url("javascript:alert(1)")


def test_images_go_out_as_image_url_parts(fake: FakeOpenAI, fake_url: str, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "dot.png"
    path.write_bytes(tiny_png())
    chat = new_chat(fake_url)
    chat.chat("What is in these?", content_image_file(path), content_image_url("https://example.org/c.png"))
    (message,) = fake.last_body()["messages"]
    assert message["role"] == "user"
    assert message["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": content_image_file(path).url}},
        {"type": "image_url", "image_url": {"url": "https://example.org/c.png"}},
    ]
    # And again with the next request, from the history.
    list(chat.stream("and now?"))
    assert fake.last_body()["messages"][0] == message


def test_an_omitted_image_is_sent_as_a_short_text(fake: FakeOpenAI, fake_url: str) -> None:
    """A restored record keeps large images by reference only: never sent as a broken image."""
    from jupyter_llmchat import Turn
    from jupyter_llmchat import ContentText

    chat = new_chat(fake_url)
    chat.set_turns([Turn("user", [ContentText("see"), ContentImage("omitted:sha256:abc")]),
                    Turn("assistant", [ContentText("ok")])])
    chat.chat("next")
    parts = fake.last_body()["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "text"]


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ConfigurationError, match="matplotlib"):
        content_image_plot()


def test_plot_of_the_current_figure(fake: FakeOpenAI, fake_url: str) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    with pytest.raises(ConfigurationError, match="no current"):
        content_image_plot()
    fig = plt.figure()
    plt.plot([1, 2, 3])
    try:
        image = content_image_plot()
        assert image.url.startswith("data:image/png;base64,")
        assert base64.b64decode(image.url.split(",", 1)[1]).startswith(b"\x89PNG")
        assert content_image_plot(fig).url.startswith("data:image/png;base64,")
    finally:
        plt.close("all")
