"""The docs stay current and navigable: no ticket references, a short README, live links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150

# "issue 12", "issue-12", "issue #12", "#12 ", "(issue", "stop 35": history belongs in
# git log and docs/HISTORY.md's prose, not as ticket numbers in the docs.
TICKET_REFERENCE = re.compile(
    r"\bissues?[ -]?#?\d+|(?<![\w&/])#\d+\b|\(issue\b|\bstops? #?\d+\b", re.IGNORECASE
)
# [text](target) and ![alt](target); the target up to whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose(path: Path) -> str:
    """The file without its fenced code blocks (commands and logs are not links)."""
    return FENCE.sub("", path.read_text())


@pytest.mark.parametrize("path", doc_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_ticket_references(path: Path) -> None:
    hits = [
        f"line {number}: {match.group(0)!r}"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for match in TICKET_REFERENCE.finditer(line)
    ]
    assert hits == [], (
        f"{path.relative_to(ROOT)} cites tickets; say what is true now instead: {hits}"
    )


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail to docs/"
    )


@pytest.mark.parametrize("path", doc_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path: Path) -> None:
    broken = []
    for target in LINK.findall(prose(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        file_part = target.split("#", 1)[0]
        if not (path.parent / file_part).exists():
            broken.append(target)
    assert broken == [], f"{path.relative_to(ROOT)} links to missing files: {broken}"


def test_the_link_check_sees_links() -> None:
    assert LINK.findall("see [a](b.md#c) and ![p](../x.png)") == ["b.md#c", "../x.png"]
    assert TICKET_REFERENCE.search("as issue 12 asks")
    assert TICKET_REFERENCE.search("fixed in #12 ")
    assert TICKET_REFERENCE.search("(issue")
    assert TICKET_REFERENCE.search("stop 35")
    assert not TICKET_REFERENCE.search("[x](#degraded-answers) and C# 12")
