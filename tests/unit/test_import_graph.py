"""module_utils files import each other without cycles (deferred imports inside functions count too)."""

import ast
from pathlib import Path

MODULE_UTILS = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"


def module_name(path):
    parts = path.relative_to(MODULE_UTILS).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports_of(path):
    """The module_utils modules ``path`` imports, at top level or inside functions."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
        target = ".".join(base + ([node.module] if node.module else []))
        candidates = [target] + [".".join(filter(None, [target, alias.name])) for alias in node.names]
        found.update(c for c in candidates if c in GRAPH_NODES)
    found.discard(name)
    return found


FILES = sorted(p for p in MODULE_UTILS.rglob("*.py"))
GRAPH_NODES = {module_name(p) for p in FILES}


def graph():
    return {module_name(p): imports_of(p) for p in FILES}


def find_cycle(edges):
    """One import cycle as a list of module names, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_the_graph_is_read():
    edges = graph()
    assert "_validate" in edges["_ves"] and "_templates" in edges["_ve_ops"]
    assert "_engine.client" in edges["_template_build"]
    assert "_ve_ops" in edges["_template_build"]


def test_no_import_cycle_in_module_utils():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_store_does_not_import_the_builders():
    assert "_template_build" not in graph()["_templates"]
