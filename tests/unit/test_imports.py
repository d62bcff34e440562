"""The library's imports run one way, read from the source (every import, also those inside functions).

entrypoints (embed.py, predict.py, train.py, cli.py, launch.entry) -> tasks -> engine -> data, models,
writers, sharding, vnp -> small leaves (errors, _version, ...). Nothing in src/ imports the tests'
helpers, nothing imports the package ``__init__`` back (``__version__`` comes from ``_version``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = "virnucdist"
ENTRYPOINTS = {f"{PKG}.embed", f"{PKG}.predict", f"{PKG}.train", f"{PKG}.cli", f"{PKG}.__main__",
               f"{PKG}.launch.entry"}
LOWER = ("data", "models", "writers", "engine", "sharding", "vnp", "packing")  # below the tasks


def _module(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, relative ones resolved."""
    me = _module(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from . import x` may name a module: count both the package and package.x
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _library():
    return {p: imports(p) for p in sorted((SRC / PKG).rglob("*.py"))}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_scan_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / PKG / "models"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("import os\n\ndef g():\n    from ..tasks import embed\n    from . import esm2\n")
    got = {m for _, m in imports(f, tmp_path)}
    assert {"os", f"{PKG}.tasks", f"{PKG}.tasks.embed", f"{PKG}.models", f"{PKG}.models.esm2"} <= got


def test_no_test_helpers_and_no_import_of_the_package_itself():
    lib = _library()
    assert len(lib) > 40
    bad = [f"{p.relative_to(SRC)}:{line} imports {m}" for p, ims in lib.items() for line, m in ims
           if m.split(".")[0] in ("tests", "_formats", "_predict_data", "_train_data", "conftest", "pytest")
           or m == f"{PKG}.testing" or (m == PKG and p.name != "__main__.py")]
    assert not bad, "\n".join(bad)


def test_lower_layers_never_import_tasks_or_entrypoints():
    bad = []
    for p, ims in _library().items():
        me = _module(p)
        if not any(_within(me, f"{PKG}.{zone}") for zone in LOWER):
            continue
        for line, m in ims:
            if _within(m, f"{PKG}.tasks") or m in ENTRYPOINTS:
                bad.append(f"{p.relative_to(SRC)}:{line} imports {m}")
    assert not bad, "imports running back up:\n" + "\n".join(bad)


def test_no_import_circles_between_modules():
    """No module reaches itself through the imports of other modules (package ``__init__`` re-exports
    aside: they only gather their children)."""
    lib = _library()
    modules = {_module(p): p for p in lib if p.name != "__init__.py"}
    graph = {m: sorted({t for _, t in lib[p] if t in modules and t != m}) for m, p in modules.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                circles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(graph) > 40
    assert not circles, "import circles:\n" + "\n".join(circles)
