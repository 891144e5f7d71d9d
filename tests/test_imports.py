"""Library layering: models/, utils/, distill/ never import a top-level script, and never each other in a cycle.

Read with ast, so imports nested inside functions (lazy imports) count as much as top-level ones.
"""
import ast

from conftest import ROOT

LIBRARY_PACKAGES = ("models", "utils", "distill")
SCRIPTS = ("train", "train_distillation", "val", "detect", "export", "compare")


def module_name(path, root):
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_names(tree, module):
    """Every module an ast imports (absolute names; relative imports resolved against `module`)."""
    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)  # `from utils import plots`


def import_graph(root=ROOT):
    modules = {module_name(p, root): p for pkg in LIBRARY_PACKAGES for p in sorted((root / pkg).rglob("*.py"))}
    graph, script_imports = {}, []
    for name, path in modules.items():
        deps = set()
        for target in imported_names(ast.parse(path.read_text(), str(path)), name):
            if target.split(".")[0] in SCRIPTS:
                script_imports.append(f"{name} imports {target}")
            if target in modules and target != name:
                deps.add(target)
        graph[name] = deps
    return graph, script_imports


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None. Depth-first, three colours."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_library_never_imports_a_script():
    graph, script_imports = import_graph()
    assert len(graph) > 15 and "utils.evaluate" in graph  # the walk really sees the library
    assert script_imports == []


def test_no_import_cycles_among_library_modules():
    graph, _ = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_checker_sees_lazy_imports_and_cycles(tmp_path):
    """The checker itself: a lazy import inside a function closes a cycle and a script import is named."""
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "a.py").write_text("from utils.b import f\n")
    (tmp_path / "utils" / "b.py").write_text("def f():\n    from utils import a\n    import val\n")
    for pkg in ("models", "distill"):
        (tmp_path / pkg).mkdir()
    graph, script_imports = import_graph(tmp_path)
    assert script_imports == ["utils.b imports val"]
    assert find_cycle(graph) in (["utils.a", "utils.b", "utils.a"], ["utils.b", "utils.a", "utils.b"])
