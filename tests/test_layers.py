"""The packages import only downward: core -> tasks -> sae / toy -> attribution -> circuit ->
export -> load -> demo -> cli -> the public API (docs/design.md, "Layout")."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (unit, layer): a module belongs to the longest unit its dotted name starts with. Units of one
# layer are siblings and may not import each other (the toy model knows nothing of SAEs).
LAYERS = {
    "circuits.core": 0,
    "tasks": 1,
    "sae": 2,
    "circuits.toy": 2,
    "circuits.attribution": 3,
    "circuits.circuit": 4,
    "circuits.export": 5,
    "circuits.loaders": 6,
    "circuits.demo": 7,
    "circuits.cli": 8,
    "circuits": 9,  # circuits/__init__.py: the public API, above everything it names
}


def unit_of(module: str) -> str | None:
    matches = [u for u in LAYERS if module == u or module.startswith(u + ".")]
    return max(matches, key=len) if matches else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """Every project module ``path`` imports (function-local and TYPE_CHECKING ones too), with
    its line; relative imports resolved against the importing module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from circuits import load` imports the module circuits.loaders, not the package
            out += [
                (node.lineno, f"{base}.{a.name}" if unit_of(f"{base}.{a.name}") != unit_of(base) else base)
                for a in node.names
            ]
    return sorted({(line, m) for line, m in out if unit_of(m) is not None})


def sources() -> list[Path]:
    return sorted(p for top in ("circuits", "sae", "tasks") for p in (ROOT / top).rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    assert [p for p in sources() if unit_of(module_name(p)) is None] == []


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_only_downward(path: Path):
    me = unit_of(module_name(path))
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {m}"
        for line, m in imports(path)
        if unit_of(m) != me and LAYERS[unit_of(m)] >= LAYERS[me]
    ]
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "circuits" / "core" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from circuits.circuit.graph import load_graph\n    from .vocab import Node\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = [m for _, m in imports(fake)]
    assert found == ["circuits.circuit.graph", "circuits.core.vocab"]
    assert LAYERS[unit_of(found[0])] > LAYERS[unit_of(module_name(fake))]


def test_every_path_the_docs_name_exists():
    import re

    named = {
        m
        for doc in ("README.md", "docs/design.md")
        for m in re.findall(r"`((?:circuits|sae|tasks|tests|benchmarks)/[\w/.]*)`", (ROOT / doc).read_text())
    }
    assert named, "the docs name no module"
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
