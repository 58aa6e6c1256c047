"""A small report document rendered twice: Markdown beside its PNGs, and one self-contained
HTML file with the images embedded, so a report can be mailed or opened anywhere."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from tinypolicy.ondevice.artefact import write_text


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def table(self, header: list[str], rows: list[list[object]], align_right_from: int = 1) -> None:
        self.blocks.append(("table", (header, [[str(c) for c in row] for row in rows], align_right_from)))

    def image(self, path: Path, caption: str) -> None:
        """`path` lies in the folder the document is written to."""
        self.blocks.append(("image", (Path(path), caption)))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                lines += [f"## {value}", ""]
            elif kind == "paragraph":
                lines += [value, ""]
            elif kind == "table":
                header, rows, right = value
                lines.append("| " + " | ".join(header) + " |")
                lines.append("|" + "|".join("---:" if i >= right else "---" for i in range(len(header))) + "|")
                lines += ["| " + " | ".join(row) + " |" for row in rows]
                lines.append("")
            else:
                path, caption = value
                lines += [f"![{caption}]({path.name})", ""]
        return "\n".join(lines)

    def html(self, folder: Path) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "paragraph":
                body.append(f"<p>{html.escape(value)}</p>")
            elif kind == "table":
                header, rows, right = value
                cell = lambda tag, i, text: (
                    f"<{tag}{' class=num' if i >= right else ''}>{html.escape(text)}</{tag}>")
                body.append("<table><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>")
                body += ["<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows]
                body.append("</table>")
            else:
                path, caption = value
                data = base64.b64encode((folder / path.name).read_bytes()).decode()
                body.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
                 "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem}"
                 "th{background:#f3f3f3}.num{text-align:right}img{max-width:100%}figcaption{color:#555}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

    def write(self, folder: Path, stem: str = "report") -> list[Path]:
        """Write `stem`.md and `stem`.html atomically; returns their paths."""
        paths = []
        for suffix, text in ((".md", self.markdown()), (".html", self.html(folder))):
            path = folder / f"{stem}{suffix}"
            write_text(path, text)
            paths.append(path)
        return paths
