"""A report as one structure (sections of paragraphs, tables, lists, images, code),
rendered to Markdown and to HTML, so both say the same sentences from one source."""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Paragraph:
    text: str
    style: str = ""  # "verdict": the one sentence read first; "note": small print


@dataclass(frozen=True)
class Table:
    header: list[str]  # the first column's header is empty: it labels the rows
    rows: list[tuple[str, list[str]]]  # (row label, cells)


@dataclass(frozen=True)
class Bullets:
    items: list[tuple[str, str]]  # (term, text)
    separator: str = ": "
    bold_terms: bool = False


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report
    caption: str


@dataclass(frozen=True)
class Code:
    lines: list[str]
    language: str = "bash"


@dataclass
class Section:
    title: str | None  # None: no heading (the opening, a note between sections)
    blocks: list = field(default_factory=list)


# ------------------------------------------------------------------ Markdown


def _md_block(block) -> str:
    if isinstance(block, Paragraph):
        return f"**{block.text}**" if block.style == "verdict" else block.text
    if isinstance(block, Table):
        lines = ["| | " + " | ".join(block.header) + " |", "|---|" + "---|" * len(block.header)]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in block.rows]
        return "\n".join(lines)
    if isinstance(block, Bullets):
        term = (lambda t: f"**{t}**") if block.bold_terms else (lambda t: t)
        return "\n".join(f"- {term(name)}{block.separator}{text}" for name, text in block.items)
    if isinstance(block, Image):
        return f"![{block.caption}]({block.path})"
    if isinstance(block, Code):
        return "\n".join([f"```{block.language}", *block.lines, "```"])
    raise TypeError(f"not a report block: {block!r}")


def to_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        if section.title is not None:
            parts.append(f"## {section.title}")
        parts += [_md_block(block) for block in section.blocks]
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------ HTML

STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}"
    "th:first-child{text-align:left}.verdict{font-size:1.25em;font-weight:bold}"
    ".note{color:#555;font-size:.9em}img{max-width:100%}pre{background:#f4f4f4;padding:.6em;"
    "white-space:pre-wrap}"
)


def _html_block(block) -> str:
    e = html.escape
    if isinstance(block, Paragraph):
        return f"<p class={block.style}>{e(block.text)}</p>" if block.style else f"<p>{e(block.text)}</p>"
    if isinstance(block, Table):
        lines = ["<table><tr><th></th>" + "".join(f"<th>{e(name)}</th>" for name in block.header) + "</tr>"]
        lines += ["<tr><th>" + e(label) + "</th>" + "".join(f"<td>{e(cell)}</td>" for cell in cells) + "</tr>"
                  for label, cells in block.rows]
        return "\n".join(lines + ["</table>"])
    if isinstance(block, Bullets):
        term = (lambda t: f"<b>{e(t)}</b>") if block.bold_terms else e
        items = [f"<li>{term(name)}{e(block.separator)}{e(text)}</li>" for name, text in block.items]
        return "\n".join(["<ul>", *items, "</ul>"])
    if isinstance(block, Image):
        return f"<img src=\"{e(block.path)}\" alt=\"{e(block.caption)}\">"
    if isinstance(block, Code):
        return "<pre>" + e("\n".join(block.lines)) + "</pre>"
    raise TypeError(f"not a report block: {block!r}")


def to_html(title: str, sections: list[Section], page_title: str | None = None) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        if section.title is not None:
            body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [_html_block(block) for block in section.blocks]
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(page_title or title)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
