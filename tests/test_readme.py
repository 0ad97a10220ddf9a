"""The README's package map names every module of the package."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_map_names_every_module():
    text = (ROOT / "README.md").read_text()
    package = ROOT / "src" / "trustad"
    modules = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if p.name != "__init__.py" and p.parent.name != "cli"
    ]
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"README's package map lacks {missing}"
