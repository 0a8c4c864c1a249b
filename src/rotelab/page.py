"""The HTML pages rotelab writes (`rotelab report`, `rotelab reproduce`): one style, figures embedded."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}"
         "td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}img{max-width:100%}"
         "figure{display:inline-block;margin:8px}")


def img(path: Path) -> str:
    """A PNG embedded in the page (the page stands alone)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def figure(path: Path, caption: str) -> str:
    return f"<figure>{img(path)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def write(path: Path, title: str, body: str) -> Path:
    """A whole page: `body` is HTML already."""
    Path(path).write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                          f"<style>{STYLE}</style></head><body>{body}</body></html>")
    return Path(path)
