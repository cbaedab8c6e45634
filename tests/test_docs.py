"""The documentation points only at files that exist in the repository."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def local_links(md: Path):
    for target in LINK.findall(md.read_text()):
        if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


@pytest.mark.parametrize("md", DOCS, ids=lambda p: p.name)
def test_linked_files_exist(md):
    missing = [t for t in local_links(md) if not (md.parent / t).exists()]
    assert not missing, f"{md.name} links files that are not in the repository: {missing}"


def test_link_check_sees_links():
    assert len(list(local_links(ROOT / "README.md"))) >= 5  # the check is not vacuous
