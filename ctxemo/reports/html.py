"""Building blocks of a self-contained HTML page: escaped text, tables, the run folder's Markdown tables
as HTML, figures as PNG data URIs, and the page shell.

Self-contained means the page loads nothing: no script at all, styles inline, every image a `data:` URI,
and a Content-Security-Policy that forbids any other source, so that a page copied off the machine
(hotline data) cannot call anywhere when opened.
"""
from __future__ import annotations

import base64
import html
import io
import re
from typing import Iterable, Optional, Sequence

from matplotlib.figure import Figure

from ctxemo.reports.plots import DPI

# Only inline styles and data: images may load; everything else (scripts, fonts, frames, fetches) is refused.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
h3 { font-size: 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0 1rem; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
p.note { color: #555; font-size: 0.85rem; } nav a { margin-right: 0.8rem; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, numeric_from: int = 1) -> str:
    """An HTML table; cells from column `numeric_from` on are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if j >= numeric_from else ''}>{esc(c)}</td>"
                                    for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"


def _inline(text: str) -> str:
    """Escaped text with Markdown `code` spans as <code>."""
    parts = re.split(r"`([^`]*)`", text)
    return "".join(f"<code>{esc(p)}</code>" if k % 2 else esc(p) for k, p in enumerate(parts))


def _cells(line: str) -> list:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(text: str, *, heading_offset: int = 2) -> str:
    """The Markdown the run folder writes (summary.md, confused_pairs.md): headings, paragraphs and pipe
    tables, rendered as they are (whatever rows and tables the file holds), headings shifted down by
    `heading_offset` levels to sit inside a report section."""
    out, block = [], []

    def flush_table():
        if block:
            header, *rows = block
            rows = [r for r in rows if not re.fullmatch(r"\|?\s*:?-{3,}.*", r.strip())]  # the |---| line
            out.append(table(_cells(header), [_cells(r) for r in rows]))
            block.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        flush_table()
        if not line.strip():
            continue
        heading = re.match(r"^(#+)\s+(.*)$", line)
        if heading:
            level = min(6, len(heading.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        else:
            out.append(f"<p>{_inline(line)}</p>")
    flush_table()
    return "\n".join(out) + "\n"


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def image(png: bytes, *, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="{png_data_uri(png)}">\n'


def figure(fig: Figure, *, alt: str) -> str:
    """A matplotlib figure as an embedded PNG."""
    return image(figure_png(fig), alt=alt)


def section(anchor: str, title: str, body: str, *, note: Optional[str] = None) -> str:
    note_html = f'<p class="note">{_inline(note)}</p>\n' if note else ""
    return f'<section id="{esc(anchor)}">\n<h2>{esc(title)}</h2>\n{note_html}{body}</section>\n'


def page(title: str, sections: Sequence[tuple]) -> str:
    """The whole document: `sections` are (anchor, title, html) in order, with a table of contents."""
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(name)}</a>' for anchor, name, _ in sections)
    body = "".join(content for _, _, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
            "<link rel=\"icon\" href=\"data:,\">\n"  # else browsers fetch /favicon.ico
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n"
            f"<nav>{nav}</nav>\n{body}</body>\n</html>\n")
