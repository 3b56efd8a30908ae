"""Every relative link in the documentation resolves: README.md, docs/**/*.md and terraform/README.md.

A link must name a file or directory inside the repository (a clone has nothing beside it), and a
`#anchor` must name a heading of the target page, as GitHub slugs headings. Links inside code
(fenced blocks, inline code) are text, not links. Needs no tollgate binary.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from processes import REPO


def doc_pages() -> list[Path]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    terraform = REPO / "terraform" / "README.md"
    if terraform.exists():
        pages.append(terraform)
    return pages


FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
# [text](target) and ![alt](target); the target may be <bracketed> and may carry a "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
# <a name="..."> / id="..." anchors written in HTML.
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code blanked out."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            marker = m.group(1)
            if fence is None:
                fence = marker
                continue
            if marker[0] == fence[0] and len(marker) >= len(fence) and not line.strip()[len(marker) :].strip():
                fence = None
                continue
        if fence is None:
            yield number, INLINE_CODE.sub(lambda c: " " * len(c.group(0)), line)


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: markdown markup and punctuation dropped, lower case, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    kept = []
    for ch in text:
        if ch in (" ", "-", "_") or ch.isalnum():
            kept.append("-" if ch == " " else ch)
        elif unicodedata.category(ch).startswith("M"):  # combining marks belong to letters
            kept.append(ch)
    return "".join(kept)


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub makes on the page: heading slugs (repeats get -1, -2, ...) and HTML ids."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    text = page.read_text(encoding="utf-8")
    fence = None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if fence is not None:
            continue
        h = HEADING.match(line)
        if h:
            slug = github_slug(h.group(2).replace("`", ""))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
        found.update(a.lower() for a in HTML_ANCHOR.findall(line))
    return found


def relative_links(page: Path):
    """(line number, target) for each link that is not an absolute URL."""
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for m in LINK.finditer(line):
            target = m.group(1).strip("<>")
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            yield number, target


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, target in relative_links(page):
        where = f"{page.relative_to(REPO)}:{number}: {target}"
        path_part, _, anchor = target.partition("#")
        dest = page if not path_part else (page.parent / path_part).resolve()
        if dest != page and REPO.resolve() not in (dest, *dest.parents):
            problems.append(f"{where}: points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: {dest.relative_to(REPO.resolve())} does not exist")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix != ".md":
                problems.append(f"{where}: an anchor on a file that is not a markdown page")
            elif anchor.lower() not in anchors(dest):
                problems.append(f"{where}: no heading makes the anchor #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_every_docs_page_is_in_the_index():
    index = REPO / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for _, t in relative_links(index)}
    missing = [str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md") if p != index and p.resolve() not in linked]
    assert missing == [], "docs pages not linked from docs/README.md"


def test_github_slug_rules():
    assert github_slug("How a request flows") == "how-a-request-flows"
    assert github_slug("A real provider behind `dev/run`".replace("`", "")) == "a-real-provider-behind-devrun"
    assert github_slug("tollgate — design and contracts") == "tollgate--design-and-contracts"
    assert github_slug("Runbook: DynamoDB outage") == "runbook-dynamodb-outage"
    assert github_slug("Limits, budgets, pricing") == "limits-budgets-pricing"
    assert github_slug("snake_case and CamelCase") == "snake_case-and-camelcase"


def test_the_checker_catches_broken_links(tmp_path, monkeypatch):
    """The checker itself fails on a missing file, a missing anchor and a link out of the clone."""
    import test_docs

    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "# Top\n\n## Quick start\n\n"
        "[ok](docs/a.md#second-part) [ok](#quick-start) [gone](docs/missing.md) [bad](docs/a.md#nope)\n"
        "[out](../elsewhere/DESIGN.md) `[code](not/a/link.md)`\n\n"
        "```\n[fenced](not/a/link.md)\n```\n"
    )
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Second part\n\n[back](../README.md#top)\n")
    monkeypatch.setattr(test_docs, "REPO", tmp_path)
    problems = test_docs.broken_links(tmp_path / "README.md")
    assert len(problems) == 3, problems
    assert "docs/missing.md does not exist" in problems[0]
    assert "#nope" in problems[1]
    assert "outside the repository" in problems[2]
    assert test_docs.broken_links(tmp_path / "docs" / "a.md") == []
