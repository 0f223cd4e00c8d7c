"""One self-contained HTML page: sections of text, tables and plotly figures (plotly.js inlined once)."""

from __future__ import annotations

import html
from typing import Any

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4}.note{color:#777;font-style:italic}.pruned{color:#a60}.fail{color:#c00}
.complete{color:#070}h2{margin-top:1.6em}
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def table(header: list[str], rows: list[list[Any]], row_class: list[str] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class Page:
    def __init__(self, title: str, offline: bool = True):
        self.title, self.parts = title, [f"<h1>{esc(title)}</h1>"]
        # offline: plotly.js goes into the page once (about 4 MB) so it opens with no network
        self._js = True if offline else "cdn"

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{esc(text)}</h2>")

    def text(self, text: str, note: bool = False) -> None:
        self.parts.append(f'<p class="note">{esc(text)}</p>' if note else f"<p>{esc(text)}</p>")

    def raw(self, fragment: str) -> None:
        self.parts.append(fragment)

    def figure(self, fig: Any) -> None:
        if isinstance(fig, str):
            self.text(fig, note=True)
            return
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=self._js))
        self._js = False

    def render(self) -> str:
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(self.parts)}</body></html>\n"
        )
