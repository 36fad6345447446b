"""A report as a list of blocks (heading, paragraph, list, table, image), rendered to Markdown and to a
self-contained HTML page, so both always say the same thing. Used by lesson reports and by commands that print
tables (`gptlab quant inspect`)."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "p" | "ul" | "table" | "img"
    text: str = ""
    items: list | None = None  # list items, or table rows (the first row is the header)


def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out += [f"# {b.text}", ""]
        elif b.kind == "h2":
            out += [f"## {b.text}", ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "ul":
            out += [f"- {item}" for item in b.items] + [""]
        elif b.kind == "table":
            cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            out.append("| " + " | ".join(cell(h) for h in b.items[0]) + " |")
            out.append("|" + "---|" * len(b.items[0]))
            out += ["| " + " | ".join(cell(x) for x in row) + " |" for row in b.items[1:]]
            out.append("")
        elif b.kind == "img":
            out += [f"![{b.items[0]}]({b.text})", ""]
    return "\n".join(out)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}li{margin:0.3em 0}"""


def to_html(blocks: list[Block], directory: Path) -> str:
    e = html.escape
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(blocks[0].text)}</title><style>{STYLE}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in b.items[0])
            body = "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in row) + "</tr>" for row in b.items[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode((directory / b.text).read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{e(b.items[0])}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(b.items[0])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
