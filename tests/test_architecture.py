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


def test_types_are_checked_everywhere_without_blanket_ignores():
    """mypy checks all three packages with check_untyped_defs (make typecheck); what it is told to overlook is one
    error code on one line, never a file or a package."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["check_untyped_defs"] is True
    assert set(config["packages"]) == {"porter", "porter_sat", "porter_torch", "porter_visualglm"}
    overrides = config.get("overrides", [])
    assert not any("ignore_errors" in o for o in overrides), "ignore_errors hides a module from mypy"
    blanket = [f"{p.relative_to(ROOT)}:{n}" for package in PACKAGES for p in (ROOT / package).rglob("*.py")
               if "__pycache__" not in p.parts
               for n, line in enumerate(p.read_text().splitlines(), 1)
               if re.search(r"#\s*type:\s*ignore(?!\[)", line) or "mypy: ignore-errors" in line]
    assert not blanket, f"a type: ignore names its error code: {', '.join(blanket)}"


def test_bundled_plugins_use_only_the_documented_api():
    """docs/writing-plugins.md lists the modules a plugin may import; the plugins and the model here are held to it,
    so the list stays true (a third-party plugin has no other promise)."""
    guide = (ROOT / "docs" / "writing-plugins.md").read_text()
    paragraph = guide.split("The public API a plugin may use:", 1)[1].split("\n\n", 1)[0]
    public = set(re.findall(r"`(porter(?:\.\w+)?)`", paragraph))
    used: dict[str, str] = {}
    for package in ("plugins", "models"):
        for path in (ROOT / package).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            for module in re.findall(r"^\s*(?:from|import) (porter(?:\.\w+)?)", path.read_text(), flags=re.M):
                used.setdefault(module, str(path.relative_to(ROOT)))
    outside = {m: p for m, p in used.items() if m not in public and m != "porter"}
    assert not outside, f"not in docs/writing-plugins.md's public API: {outside}"


def test_no_function_runs_over_60_lines_and_the_executable_stays_small():
    """Functions a reader would want split are split (issue #25 allows three with a reason; there are none), and the
    `porter` executable builds and dispatches only: each command is a module of porter/commands/."""
    import ast

    long = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, f"over 60 lines: {', '.join(long)}"
    assert len((ROOT / "porter" / "cli.py").read_text().splitlines()) < 150
