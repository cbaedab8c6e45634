"""The import graph of the odenet package, by layer; exit 1 on a cycle or an import of a higher layer.

usage: python tools/imports.py [--dot]     (--dot: Graphviz source, e.g. | dot -Tsvg > imports.svg)

Every import counts, also those inside functions. A module may import its own layer or lower ones.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent / "odenet"

# lowest first; a module may import modules of its own layer or of a lower one
LAYERS = [
    ("base", ["errors", "files", "device"]),
    ("ode", ["ode.tableaus", "ode.backends", "ode.settings", "ode.native", "ode.adjoint", "ode.checks",
             "ode.torchdiffeq_backend", "ode.integrate", "ode.compat", "ode"]),
    ("settings and data", ["config", "data", "images"]),
    ("model", ["paper", "model"]),
    ("model services", ["checkpoint", "shipped", "evaluate", "flow", "ood", "figures", "distributed", "invariance",
                        "export"]),
    ("jobs", ["train", "report", "demo"]),
    ("benchmarks", ["bench.common", "bench.plain_torchdiffeq", "bench.speed", "bench.gradients", "bench.solvers",
                    "bench.invariance", "bench.table1", "bench.roofline", "bench"]),
    ("faces", ["api", "cli", "__main__", ""]),
]


def modules() -> Dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        out["" if name == "__init__" else name.removesuffix(".__init__")] = p
    return out


def imports(name: str, path: Path, mods: Dict[str, Path]) -> Set[str]:
    pkg_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "":
        pkg_parts = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "odenet" or node.module.startswith("odenet.")):
                target = node.module[len("odenet."):] if node.module != "odenet" else ""
            else:
                continue
            for a in node.names:  # "from . import checkpoint" names a module
                sub = f"{target}.{a.name}" if target else a.name
                found.add(sub if sub in mods else target)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "odenet" or a.name.startswith("odenet."):
                    found.add(a.name[len("odenet."):] if a.name != "odenet" else "")
    found.discard(name)
    return {m for m in found if m in mods}


def main(argv: List[str]) -> int:
    mods = modules()
    layer = {m: i for i, (_, ms) in enumerate(LAYERS) for m in ms}
    missing = sorted(set(mods) - set(layer))
    graph = {m: imports(m, p, mods) for m, p in mods.items()}
    if "--dot" in argv:
        print("digraph odenet {\n  rankdir=BT;")
        for m, deps in sorted(graph.items()):
            for d in sorted(deps):
                print(f'  "{m or "odenet"}" -> "{d or "odenet"}";')
        print("}")
        return 0
    problems = [f"module {m} has no layer in tools/imports.py" for m in missing]
    for i, (title, ms) in enumerate(LAYERS):
        print(f"{i} {title}")
        for m in ms:
            if m in graph:
                deps = sorted(graph[m], key=lambda d: (layer.get(d, 99), d))
                print(f"    {m or 'odenet'} -> {', '.join(d or 'odenet' for d in deps) or '(nothing)'}")
                problems += [f"upward import: {m or 'odenet'} (layer {i}) imports {d or 'odenet'} (layer {layer[d]})"
                             for d in deps if d in layer and layer[d] > i]
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    for p in problems:
        print(p)
    print(f"{len(mods)} modules, {sum(map(len, graph.values()))} imports, {len(problems)} problems")
    return 1 if problems else 0


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    out, state = [], {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                out.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
