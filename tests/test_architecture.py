"""docs/architecture.md names every module of porter, its plugins and its model, and nothing that is gone: a module
added without a line there fails here."""
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("porter", "plugins", "models")


def modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def named() -> set[str]:
    table = DOC.read_text().split("## Modules", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `((?:porter|plugins|models)/[^`]+\.py)` \|", table, flags=re.M))


def test_every_module_has_a_row():
    missing = sorted(modules() - named())
    assert not missing, f"add a row to docs/architecture.md's module tables for: {', '.join(missing)}"


def test_every_row_names_a_module_that_exists():
    gone = sorted(named() - modules())
    assert not gone, f"docs/architecture.md names modules that no longer exist: {', '.join(gone)}"


def test_every_package_init_is_only_a_docstring_or_a_list():
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            code = [line for line in init.read_text().splitlines() if line.strip() and not line.startswith("#")]
            assert len(code) <= 40, f"{init} holds code: give it a module of its own and a row in the doc"
