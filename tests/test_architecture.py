"""The house rules of docs/architecture.md, checked on the source: imports run one way, no circles, no module
over ~450 lines, plug-ins are one file named after their key, and only layout.py spells the on-disk names.

One exemption from "imports run one way" and "no function-local imports": the package's `__init__` loads its
public API (`mmcorpus.open_stage`, from stage/reading.py) in a module `__getattr__` on first use. Importing it
at package import would load pyarrow (~230 ms) for every `mmcorpus --help`, since the CLI imports the package;
PACKAGE_API lists the modules this holds for, and nothing else gets the exemption."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mmcorpus.fetch.urllist.executors import ENGINES
from mmcorpus.normalize.formats import NORMALIZERS
from mmcorpus.registry import FORMAT_TYPES

PACKAGE = Path(__file__).resolve().parents[1] / "mmcorpus"
# Lower layers never import higher ones (same number: siblings that must not import each other either, except
# within one folder). cli -> ops/demo -> fetch/stage -> normalize -> core -> registry -> layout/schema/errors.
LAYERS = {"__main__": -1, "cli": 0, "ops": 1, "demo": 1, "fetch": 2, "stage": 2, "normalize": 3, "core": 4,
          "registry": 5, "layout": 6, "schema": 6, "errors": 6, "": 7}
MAX_LINES = 450
LAZY_IMPORTS_ALLOWED = {"mmcorpus.cli"}  # imports each command's module when it runs: --help stays fast
PACKAGE_API = {"mmcorpus.stage.reading"}  # what mmcorpus/__init__.py may import lazily (module docstring)


def package_api_import(module: str, target: str, local: bool) -> bool:
    return module == "mmcorpus" and local and target in PACKAGE_API


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(tree: ast.Module, known: set[str]) -> list[tuple[str, bool, int]]:
    """(imported mmcorpus module, imported inside a function?, line) for every import of the package."""
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmcorpus":
            for alias in node.names:  # `from mmcorpus.fetch import checksums` imports a module
                sub = f"{node.module}.{alias.name}"
                names.append(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "mmcorpus"]
        found += [(name, id(node) not in top, node.lineno) for name in names]
    return found


MODULES = modules()


def test_imports_run_one_way():
    wrong = []
    for module, tree in MODULES.items():
        for target, local, line in imports(tree, set(MODULES)):
            a, b = folder(module), folder(target)
            if a == b or package_api_import(module, target, local):
                continue
            if LAYERS[a] > LAYERS[b]:
                wrong.append(f"{module}:{line} imports {target} (up from {a} to {b})")
            elif LAYERS[a] == LAYERS[b]:
                wrong.append(f"{module}:{line} imports {target} ({a} and {b} are siblings)")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    graph = {m: {t for t, _, _ in imports(tree, set(MODULES)) if t in MODULES and t != m}
             for m, tree in MODULES.items()}
    # A package's __init__ re-exporting its own submodules is not a circle of the design.
    graph = {m: {t for t in targets if not (m == t.rsplit(".", 1)[0] or t == m.rsplit(".", 1)[0])}
             for m, targets in graph.items()}
    seen, stack, circles = set(), [], []

    def visit(node: str) -> None:
        if node in stack:
            circles.append(" -> ".join(stack[stack.index(node):] + [node]))
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for target in sorted(graph[node]):
            visit(target)
        stack.pop()

    for module in sorted(graph):
        visit(module)
    assert not circles, "\n".join(circles)


def test_function_local_imports_only_where_allowed():
    lazy = [f"{m}:{line} imports {t}" for m, tree in MODULES.items() if m not in LAZY_IMPORTS_ALLOWED
            for t, local, line in imports(tree, set(MODULES)) if local and not package_api_import(m, t, local)]
    assert not lazy, "\n".join(lazy)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path}: split it along its section banners"


def test_every_format_type_has_its_normalizer_file():
    assert sorted(NORMALIZERS) == sorted(FORMAT_TYPES)
    for key, module in NORMALIZERS.items():
        assert module.__name__ == f"mmcorpus.normalize.formats.{key}"
        assert (PACKAGE / "normalize" / "formats" / f"{key}.py").is_file()


def test_every_engine_is_one_file():
    for engine in ENGINES:
        assert (PACKAGE / "fetch" / "urllist" / f"{engine}.py").is_file(), engine


ON_DISK_NAMES = re.compile(r"""["'](downloads|images|normalized|stages|runs|\.locks|\.mmcorpus|\.part|\.done|\.mmpart|"""
                           r"""\.rejected|manifest\.json|report\.html|\.img2dataset-work)["']""")


def literal_uses(tree: ast.Module) -> list[int]:
    """Lines where an on-disk name is a string literal used as a path (not a dict key or report field)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # root / "downloads"
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str) and ON_DISK_NAMES.fullmatch(repr(side.value)):
                    lines.append(node.lineno)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            if ON_DISK_NAMES.fullmatch(repr(node.value.value)) and not isinstance(node.targets[0], ast.Subscript):
                lines.append(node.lineno)  # MARKER_DIR = ".mmcorpus"
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if re.search(r"\.(done|part|mmpart)$|^\.(locks|mmcorpus)/|(^|/)(downloads|normalized|stages)/", text):
                lines.append(node.lineno)
    return lines


def test_only_layout_spells_the_on_disk_names():
    spelled = [f"{m}:{line}" for m, tree in MODULES.items() if m not in ("mmcorpus.layout", "mmcorpus.demo.mirror")
               for line in literal_uses(tree)]
    assert not spelled, "on-disk names outside mmcorpus/layout.py:\n" + "\n".join(spelled)
