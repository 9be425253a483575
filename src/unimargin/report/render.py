"""A small document model written as ``report.md`` and a self-contained ``report.html``.

A :class:`Document` is a list of blocks (headings, paragraphs, bullet lists, tables, code,
images). :meth:`Document.write` renders the same blocks twice: Markdown that links the PNG
files next to it, and HTML with every image embedded as a ``data:image/png;base64`` URI so
the single HTML file can be mailed or archived on its own.

Inline markup understood in paragraphs, bullets and table cells: ```code``` and
``**bold**`` (everything else is escaped in HTML).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .tables import Table

__all__ = ["Document", "markdown_inline_to_html", "slugify"]

_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def markdown_inline_to_html(text: str) -> str:
    """Escape ``text`` for HTML, turning `code` and **bold** into <code> and <strong>."""
    parts, position = [], 0
    for match in _INLINE.finditer(text):
        parts.append(html.escape(text[position:match.start()]))
        if match.group(1) is not None:
            parts.append(f"<code>{html.escape(match.group(1))}</code>")
        else:
            parts.append(f"<strong>{html.escape(match.group(2))}</strong>")
        position = match.end()
    parts.append(html.escape(text[position:]))
    return "".join(parts)


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "section"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@dataclass
class _Block:
    kind: str
    text: str = ""
    level: int = 2
    items: Sequence[str] = ()
    table: Table | None = None
    path: Path | None = None
    language: str = ""


@dataclass
class Document:
    title: str
    blocks: list[_Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> "Document":
        if not 1 <= level <= 6:
            raise ValueError(f"heading level must be in 1..6, got {level}")
        self.blocks.append(_Block("heading", text=text, level=level))
        return self

    def paragraph(self, text: str) -> "Document":
        self.blocks.append(_Block("paragraph", text=text))
        return self

    def bullets(self, items: Sequence[str]) -> "Document":
        self.blocks.append(_Block("bullets", items=list(items)))
        return self

    def table(self, table: Table | None) -> "Document":
        if table is not None:
            self.blocks.append(_Block("table", table=table))
        return self

    def code(self, text: str, language: str = "") -> "Document":
        self.blocks.append(_Block("code", text=text, language=language))
        return self

    def image(self, path: str | Path | None, caption: str) -> "Document":
        """An image file (PNG) to link from Markdown and embed in HTML; None is skipped."""
        if path is not None:
            self.blocks.append(_Block("image", text=caption, path=Path(path)))
        return self

    # ------------------------------------------------------------------ Markdown
    def to_markdown(self, base_dir: str | Path) -> str:
        base_dir = Path(base_dir)
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            if block.kind == "heading":
                lines += ["#" * block.level + " " + block.text, ""]
            elif block.kind == "paragraph":
                lines += [block.text, ""]
            elif block.kind == "bullets":
                lines += [f"- {item}" for item in block.items] + [""]
            elif block.kind == "code":
                lines += [f"```{block.language}", block.text.rstrip("\n"), "```", ""]
            elif block.kind == "image":
                relative = _relative(block.path, base_dir)
                lines += [f"![{block.text}]({relative})", "", f"*{block.text}*", ""]
            elif block.kind == "table":
                table = block.table
                if table.caption:
                    lines += [f"*{table.caption}*", ""]
                lines.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
                lines.append("|" + "|".join(" --- " for _ in table.headers) + "|")
                for row in table.rows:
                    lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
                lines.append("")
                for note in table.notes:
                    lines += [note, ""]
        return "\n".join(lines).rstrip("\n") + "\n"

    # ------------------------------------------------------------------ HTML
    def to_html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        toc = []
        for block in self.blocks:
            if block.kind == "heading":
                anchor = slugify(block.text)
                if block.level == 2:
                    toc.append(f'<li><a href="#{anchor}">{html.escape(block.text)}</a></li>')
                body.append(f'<h{block.level} id="{anchor}">{html.escape(block.text)}</h{block.level}>')
            elif block.kind == "paragraph":
                body.append(f"<p>{markdown_inline_to_html(block.text)}</p>")
            elif block.kind == "bullets":
                items = "".join(f"<li>{markdown_inline_to_html(i)}</li>" for i in block.items)
                body.append(f"<ul>{items}</ul>")
            elif block.kind == "code":
                body.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
            elif block.kind == "image":
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.text)}">'
                    f"<figcaption>{markdown_inline_to_html(block.text)}</figcaption></figure>"
                )
            elif block.kind == "table":
                table = block.table
                parts = ["<table>"]
                if table.caption:
                    parts.append(f"<caption>{markdown_inline_to_html(table.caption)}</caption>")
                parts.append("<thead><tr>" + "".join(
                    f"<th>{markdown_inline_to_html(h)}</th>" for h in table.headers) + "</tr></thead>")
                parts.append("<tbody>")
                for row in table.rows:
                    parts.append("<tr>" + "".join(f"<td>{markdown_inline_to_html(str(c))}</td>" for c in row) + "</tr>")
                parts.append("</tbody></table>")
                body.append("".join(parts))
                for note in table.notes:
                    body.append(f"<p>{markdown_inline_to_html(note)}</p>")
        nav = f'<nav><strong>Contents</strong><ul>{"".join(toc)}</ul></nav>' if toc else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + nav + "\n" + "\n".join(body) + "\n</body>\n</html>\n"
        )

    def write(self, out_dir: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``out_dir/<stem>.md`` and ``out_dir/<stem>.html``; returns both paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md_path, html_path = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        md_path.write_text(self.to_markdown(out_dir), encoding="utf-8")
        html_path.write_text(self.to_html(), encoding="utf-8")
        return md_path, html_path


def _relative(path: Path, base_dir: Path) -> str:
    try:
        return path.resolve().relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.88em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2} caption{caption-side:bottom;font-style:italic;font-size:0.9em;text-align:left}
code{background:#f4f4f4;padding:0 3px} pre{background:#f4f4f4;padding:0.7em;overflow-x:auto}
figure{margin:1em 0} img{max-width:100%} figcaption{font-style:italic;font-size:0.9em}
nav{background:#fafafa;border:1px solid #ddd;padding:0.5em 1em;display:inline-block}
"""
