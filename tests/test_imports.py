"""No import cycles anywhere in hasyncd, core/ included.

Every import counts, including those under ``TYPE_CHECKING`` and inside
functions: a cycle hidden from the interpreter is still two modules that
cannot be understood, tested or changed apart.  The graph is read with
``ast`` from the source, so nothing is imported to build it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "hasyncd"

# core/ was one cycle of seven modules (node, roles, follower, primary,
# merge, detector, status) until issue 9: each sub-machine now declares the
# narrow interface it needs of the node as a Protocol.  None may come back.
CORE_CYCLE_ALLOWANCE: frozenset[str] = frozenset()

# None outside core/ (the lab's launcher is hasyncd.labcluster, which the lab,
# its portal step and its ESP step all import, so they need not import each other).
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import sub`` imports the submodule pkg.sub when there is one.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in targets:
                t = target
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod and t != "hasyncd":
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.add(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(frozenset(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_imports_under_type_checking() -> None:
    # (the reader must not miss the kind of import that hid core/'s cycle)
    graph = import_graph()
    assert "hasyncd.core.node" in graph["hasyncd.core.counterpath"]
    assert "hasyncd.daemon.views" in graph["hasyncd.daemon.api"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycle_in_the_daemon() -> None:
    found = [c for c in cycles(import_graph()) if any(m.startswith("hasyncd.daemon") for m in c)]
    assert found == [], "import cycles in hasyncd/daemon/: " + "; ".join(
        " <-> ".join(sorted(c)) for c in found
    )


def test_core_cycles_do_not_grow_and_there_are_none_elsewhere() -> None:
    for c in cycles(import_graph()):
        if c in KNOWN_CYCLES:
            continue
        assert c <= CORE_CYCLE_ALLOWANCE, (
            f"an import cycle: {' <-> '.join(sorted(c))}; allowed in core/: "
            f"{sorted(CORE_CYCLE_ALLOWANCE) or 'none'}"
        )
