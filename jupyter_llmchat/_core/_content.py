"""Image contents to send with a prompt: ``chat.chat("What is this?", content_image_file(p))``.

Each returns a ``ContentImage`` (sent as an ``image_url`` part). Files and plots become
``data:`` URLs; the notebook record stores large ones by reference (``_metadata``).
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

from .._errors import ConfigurationError
from ._turns import ContentImage

__all__ = ["MAX_IMAGE_BYTES", "content_image_file", "content_image_plot", "content_image_url"]

#: Largest image file sent inline (the usual limit of hosted APIs is 20 MB per image).
MAX_IMAGE_BYTES = 20 * 1024 * 1024

_MIME = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


def _sniff(head: bytes) -> str | None:
    for magic, mime in _MIME.items():
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def content_image_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_IMAGE_BYTES) -> ContentImage:
    """An image file (PNG, JPEG, GIF or WebP, recognised by its bytes) as a ``data:`` URL."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ConfigurationError(f"cannot read image {os.fspath(path)!r}: {exc.strerror}") from None
    if size > max_bytes:
        raise ConfigurationError(
            f"image {os.fspath(path)!r} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit",
            hint="resize it, or pass max_bytes= if your server takes larger images",
        )
    with open(path, "rb") as f:
        data = f.read()
    mime = _sniff(data[:16])
    if mime is None:
        raise ConfigurationError(
            f"{os.fspath(path)!r} is not a PNG, JPEG, GIF or WebP image",
        )
    return ContentImage(f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}")


def content_image_url(url: str) -> ContentImage:
    """An image by URL (``http(s)://`` fetched by the server, or a ``data:image/...`` URL)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:image/")):
        raise ConfigurationError(
            f"not an image URL: {str(url)[:80]!r}", hint="give an http(s):// or data:image/ URL"
        )
    return ContentImage(url)


def content_image_plot(fig: Any = None, *, dpi: int = 96, format: str = "png") -> ContentImage:
    """A matplotlib figure (the current one by default) as a PNG ``data:`` URL."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError(
            "content_image_plot() needs matplotlib", hint="pip install matplotlib"
        ) from None
    if fig is None:
        if not plt.get_fignums():
            raise ConfigurationError("there is no current matplotlib figure to send")
        fig = plt.gcf()
    if format not in ("png", "jpeg"):
        raise ConfigurationError('format must be "png" or "jpeg"')
    buf = io.BytesIO()
    fig.savefig(buf, format=format, dpi=dpi, bbox_inches="tight")
    return ContentImage(f"data:image/{format};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}")
