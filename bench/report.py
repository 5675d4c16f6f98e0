"""docs/benchmarks.md: one `## ` section per benchmark, each rewritten only by its own run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

PREAMBLE = "# Benchmarks\n\nReproduce with `make bench`.\n"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured table; the first column left-aligned, the others right-aligned."""
    align = [":---", *("---:" for _ in header[1:])]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first `## ` heading, and each (heading line, body) after it."""
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            sections.append((line.rstrip("\n"), []))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), [(heading, "".join(body)) for heading, body in sections]


def replace_section(text: str, heading: str, body: str) -> str:
    """`text` with the section `heading` (e.g. "## Lease primitive") set to `body`.

    Every other section is kept as it was, in its place; a new section goes at the end.
    """
    preamble, sections = split_sections(text)
    if not preamble.strip():
        preamble = PREAMBLE
    new_body = "\n" + body.strip("\n") + "\n"
    if any(existing == heading for existing, _ in sections):
        sections = [(h, new_body if h == heading else b) for h, b in sections]
    else:
        sections.append((heading, new_body))
    return _join([preamble, *(f"{h}\n{b}" for h, b in sections)])


def _join(chunks: list[str]) -> str:
    """The chunks, each separated from the one before by at least one blank line."""
    text = ""
    for chunk in chunks:
        if text and not text.endswith("\n\n"):
            text += "\n" if text.endswith("\n") else "\n\n"
        text += chunk
    return text.rstrip("\n") + "\n"


def write_section(heading: str, body: str, path: Path = BENCHMARKS_MD) -> Path:
    """Replace (or add) one section of the benchmarks page, keeping every other one."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, heading, body), encoding="utf-8")
    return path
