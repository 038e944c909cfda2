"""The documentation site: `mkdocs build --strict` passes (no broken links, no page left out of the nav), and every
page under docs/ is in mkdocs.yml's nav."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def nav_pages(nav) -> list[str]:
    """Every page path in a mkdocs nav (strings, `{title: page}` mappings, nested sections)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    return []


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = set(nav_pages(config["nav"]))
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert pages - in_nav == set(), f"docs pages missing from the mkdocs.yml nav: {sorted(pages - in_nav)}"
    assert in_nav - pages == set(), f"nav entries without a page in docs/: {sorted(in_nav - pages)}"


def test_mkdocs_strict_build(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[test]' installs it)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    for page in ("index.html", "concepts/index.html", "quickstart/index.html", "recipes/index.html"):
        assert (tmp_path / "site" / page).is_file()
