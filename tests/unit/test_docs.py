"""The docs that are generated from the code stay in step with it."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import markdown_reference

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_current():
    doc = (ROOT / "docs" / "config_reference.md").read_text(encoding="utf-8")
    assert doc == markdown_reference(), (
        "docs/config_reference.md is stale: python -m tunesmith.config --markdown "
        "> docs/config_reference.md"
    )


def test_readme_links_point_at_existing_files():
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
