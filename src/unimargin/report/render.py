"""A small document model written as ``report.md`` and a self-contained ``report.html``.

A :class:`Document` is a list of blocks (headings, paragraphs, bullet lists, tables, code,
images). :meth:`Document.write` renders the same blocks twice: Markdown that links the PNG
files next to it, and HTML with every image embedded as a ``data:image/png;base64`` URI so
the single HTML file can be mailed or archived on its own.

Inline markup understood in paragraphs, bullets, captions and table cells: ```code```,
``**bold**``, ``*italic*`` (CommonMark flanking: ``t*`` or ``a * b`` stay literal) and
``[text](target)`` links; everything else is escaped in HTML, so every Markdown construct
the report writes renders in the HTML too (no literal asterisks). A glossary block is a
definition list whose entries carry the anchors the metric links point to.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .glossary import GlossaryEntry
from .tables import Table

__all__ = ["Document", "markdown_inline_to_html", "slugify"]

# code | **bold** | *italic* (opening * not after a word char / before a space, closing *
# not after a space / before a word char) | [text](target)
_INLINE = re.compile(
    r"`([^`]+)`"
    r"|\*\*(.+?)\*\*"
    r"|(?<![\w*])\*(?=[^\s*])([^*]+?)(?<=[^\s*])\*(?![\w*])"
    r"|\[([^\]]+)\]\(([^)\s]+)\)"
)


def markdown_inline_to_html(text: str) -> str:
    """Escape ``text`` for HTML, turning `code`, **bold**, *italic* and [text](target) into
    <code>, <strong>, <em> and <a>; bold, italic and link text may hold further markup."""
    parts, position = [], 0
    for match in _INLINE.finditer(text):
        parts.append(html.escape(text[position:match.start()]))
        code, bold, italic, link_text, target = match.groups()
        if code is not None:
            parts.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            parts.append(f"<strong>{markdown_inline_to_html(bold)}</strong>")
        elif italic is not None:
            parts.append(f"<em>{markdown_inline_to_html(italic)}</em>")
        else:
            parts.append(f'<a href="{html.escape(target, quote=True)}">{markdown_inline_to_html(link_text)}</a>')
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
    entries: Sequence[GlossaryEntry] = ()


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

    def glossary(self, entries: Sequence[GlossaryEntry]) -> "Document":
        """Terms with their anchors (the targets of the metric links)."""
        self.blocks.append(_Block("glossary", entries=list(entries)))
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
            elif block.kind == "glossary":
                lines += [f'- <a id="{e.anchor}"></a>**{e.term}**: {e.text}' for e in block.entries] + [""]
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
                text = markdown_inline_to_html(block.text)
                if block.level == 2:
                    toc.append(f'<li><a href="#{anchor}">{text}</a></li>')
                body.append(f'<h{block.level} id="{anchor}">{text}</h{block.level}>')
            elif block.kind == "paragraph":
                body.append(f"<p>{markdown_inline_to_html(block.text)}</p>")
            elif block.kind == "bullets":
                items = "".join(f"<li>{markdown_inline_to_html(i)}</li>" for i in block.items)
                body.append(f"<ul>{items}</ul>")
            elif block.kind == "glossary":
                items = "".join(f'<dt id="{html.escape(e.anchor, quote=True)}">{markdown_inline_to_html(e.term)}</dt>'
                                f"<dd>{markdown_inline_to_html(e.text)}</dd>" for e in block.entries)
                body.append(f'<dl class="glossary">{items}</dl>')
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
                parts = ['<div class="scroll"><table>']
                if table.caption:
                    parts.append(f"<caption>{markdown_inline_to_html(table.caption)}</caption>")
                parts.append("<thead><tr>" + "".join(
                    f"<th>{markdown_inline_to_html(h)}</th>" for h in table.headers) + "</tr></thead>")
                parts.append("<tbody>")
                for row in table.rows:
                    parts.append("<tr>" + "".join(f"<td>{markdown_inline_to_html(str(c))}</td>" for c in row) + "</tr>")
                parts.append("</tbody></table></div>")
                body.append("".join(parts))
                for note in table.notes:
                    body.append(f"<p>{markdown_inline_to_html(note)}</p>")
        # one line of links, so the first screen shows the verdict, not a table of contents
        nav = f'<nav><strong>Contents:</strong> <ul>{"".join(toc)}</ul></nav>' if toc else ""
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
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin:0.4em 0} h3 code{font-size:0.95em}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.88em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
ul li{margin:0.25em 0;line-height:1.4}
dl.glossary{display:grid;grid-template-columns:max-content auto;gap:0.2em 1em;font-size:0.92em}
dl.glossary dt{font-weight:bold} dl.glossary dd{margin:0}
:target{background:#fff3c4}
th{background:#f2f2f2;white-space:normal;min-width:3.5em} caption{caption-side:bottom;font-style:italic;font-size:0.9em;text-align:left}
code{background:#f4f4f4;padding:0 3px} pre{background:#f4f4f4;padding:0.7em;overflow-x:auto}
figure{margin:1em 0} img{max-width:100%} figcaption{font-style:italic;font-size:0.9em}
nav{background:#fafafa;border:1px solid #ddd;padding:0.3em 0.8em;font-size:0.85em}
nav ul{display:inline;margin:0;padding:0} nav li{display:inline;margin-right:0.9em}
"""
