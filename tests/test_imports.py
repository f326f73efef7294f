"""ablate's import graph has no cycle (grimp sees every import: module level, inside functions, and under
TYPE_CHECKING), nothing imports the CLI, and each module of the former circle imports on its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ablate"
# the modules of the former import circle (cli, experiment, launcher, live, measure.phase, plan, run, sweep;
# report.load <-> measure.phase) and the modules that broke it
FRESH_IMPORTS = [
    "ablate.cli",
    "ablate.experiment",
    "ablate.launcher",
    "ablate.live",
    "ablate.measure.phase",
    "ablate.plan",
    "ablate.run",
    "ablate.sweep",
    "ablate.report.load",
    "ablate.sweepdir",
    "ablate.overrides",
    "ablate.paths",
    "ablate.status",
    "ablate.calibrate",
    "ablate.placement",
    "ablate.progress",
]


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """The graph's strongly connected components with more than one module (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                child = edges[node][i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            for child in edges[node]:
                if child in on_stack:
                    low[node] = min(low[node], low[child])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def shortest_cycle(graph: grimp.ImportGraph, component: set[str]) -> list[str]:
    """One shortest import cycle through a strongly connected component: [a, b, ..., a]."""
    best: list[str] | None = None
    for importer in sorted(component):
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & component):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None and (best is None or len(back) + 1 < len(best)):
                best = [importer, *back]
    assert best is not None
    return best


def describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """The cycle, one import per line with where it is."""
    lines = []
    for importer, imported in zip(cycle, cycle[1:], strict=False):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = ", ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details) or "(import)"
        lines.append(f"  {importer} -> {imported}   [{where}]")
    return "\n".join(lines)


def import_cycles(graph: grimp.ImportGraph) -> list[str]:
    """Per circle of modules that import one another: its members, then one shortest cycle through it."""
    return [
        f"{len(c)} modules import one another: {', '.join(sorted(c))}; a shortest cycle:\n"
        + describe(graph, shortest_cycle(graph, c))
        for c in strongly_connected(graph)
    ]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in (
        ("p.a", "p.b"),
        ("p.b", "p.c"),
        ("p.c", "p.a"),
        ("p.c", "p.d"),
        ("p.e", "p.e2"),
        ("p.e2", "p.e"),
    ):
        graph.add_import(importer=a, imported=b)
    assert sorted(map(sorted, strongly_connected(graph))) == [["p.a", "p.b", "p.c"], ["p.e", "p.e2"]]
    assert shortest_cycle(graph, {"p.a", "p.b", "p.c"}) == ["p.a", "p.b", "p.c", "p.a"]
    assert "p.e -> p.e2" in "\n".join(import_cycles(graph))


def test_no_import_cycle_among_ablate_modules() -> None:
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    assert len(graph.modules) > 40  # the whole package, subpackages included
    cycles = import_cycles(graph)
    for cycle in cycles:
        print(f"import cycle:\n{cycle}")
    assert not cycles, "import cycle(s) among ablate's modules:\n" + "\n\n".join(cycles)


def test_nothing_imports_the_cli() -> None:
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    assert graph.find_modules_that_directly_import("ablate.cli") == {"ablate.__main__"}
    # the sweep directory's protocol and the override parser sit below everything that uses them
    for low in ("ablate.sweepdir", "ablate.overrides", "ablate.paths"):
        imported = {m for m in graph.find_upstream_modules(low) if m.startswith("ablate.")}
        assert imported <= {"ablate.records", "ablate.errors"}, (low, imported)


@pytest.mark.parametrize("module", FRESH_IMPORTS)
def test_each_module_imports_in_a_fresh_interpreter(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
