"""The package's layout is its architecture (docs/design.md): every pipeline stage is one folder, and a
module may import only from its own stage or an earlier one. Imports are read from the source (module
level and inside functions alike), so a lazy import cannot hide a circle or a backwards edge."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ctxemo"

# Stage order (docs/design.md, "The rooms"): a module may import from its own stage or one above it here.
STAGES = ["core", "data", "models", "embedding", "evaluation", "training", "inference", "reports", "studies", "entry"]
CORE = {"config", "taxonomy", "errors", "io", "runinfo", "device"}
ENTRY = {"cli", "explore"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in CORE or parts[1] == "__init__":
        return "core"
    if parts[1] in ENTRY:
        return "entry"
    return parts[1]


def package_imports():
    """{module: {imported ctxemo module}}, resolving `from ctxemo.x import name` to the module x (or x.name
    when that is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("ctxemo")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ctxemo"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        edges[module] = {t for t in targets if t in modules and t != module}
    return edges


def find_cycle(edges):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_belongs_to_a_known_stage():
    unknown = sorted(m for m in package_imports() if stage_of(m) not in STAGES)
    assert not unknown, f"modules outside the stages of docs/design.md: {unknown}"


def test_no_import_cycle():
    cycle = find_cycle(package_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_from_a_later_stage():
    rank = {s: i for i, s in enumerate(STAGES)}
    backwards = sorted(f"{m} ({stage_of(m)}) imports {t} ({stage_of(t)})"
                       for m, targets in package_imports().items() for t in targets
                       if rank[stage_of(t)] > rank[stage_of(m)])
    assert not backwards, "imports against the pipeline order:\n" + "\n".join(backwards)


def test_cycle_finder_finds_a_planted_cycle():
    """The checks above can fail: a planted circle and a planted backwards edge are caught."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert stage_of("ctxemo.data.manifest") == "data" and stage_of("ctxemo.config") == "core"


@pytest.mark.parametrize("folder", [p for p in sorted(PACKAGE.iterdir()) if p.is_dir() and p.name != "__pycache__"
                                    and p.name != "configs"], ids=lambda p: p.name)
def test_each_stage_folder_says_what_it_holds(folder):
    init = folder / "__init__.py"
    assert init.is_file(), f"{folder} is not a package"
    assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} has no docstring saying what the stage does"
