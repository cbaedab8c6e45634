"""docs/architecture.md and docs/api.md cannot drift from the code: every module, class and function they name in
backticks exists (read from the source with ``ast``, nothing imported), and every public name has its section."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import odenet

ROOT = Path(odenet.__file__).resolve().parent
DOCS = ROOT.parent / "docs"
EXTERNAL = ("torch", "torchdiffeq", "numpy", "torchvision", "tqdm")


def _members(tree: ast.AST) -> dict:
    """Top-level names of a module -> the names defined on them (class members and ``self.x`` attributes)."""
    out: dict = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            names = set()
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
                    names.add(sub.target.id)
                elif isinstance(sub, ast.Assign):
                    names.update(t.id for t in sub.targets if isinstance(t, ast.Name))
                elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    names.add(sub.attr)
            out[node.name] = names
        elif isinstance(node, ast.Assign):
            out.update({t.id: set() for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = set()
        elif isinstance(node, ast.ImportFrom) and node.level:  # re-exports (the faces)
            out.update({(a.asname or a.name): set() for a in node.names})
    return out


def package() -> dict:
    """Module name (``ode.native``; ``odenet`` for the package) -> its members."""
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "odenet"
        mods[name] = _members(ast.parse(p.read_text()))
    return mods


MODULES = package()


def module(name: str):
    """The package module ``name`` names (``ode.native``, or its last parts: ``native``), or None."""
    if name in MODULES:
        return name
    found = [m for m in MODULES if m.endswith("." + name)]
    return found[0] if len(found) == 1 else None


def _external(parts: list) -> bool:
    """Whether a name of another library (``torch.autograd.Function``, ``tqdm.auto``, ``nn.Module``) exists."""
    import importlib

    parts = (["torch", "nn"] + parts[1:]) if parts[0] == "nn" else parts
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            return False
        return True
    return False


def resolves(name: str) -> bool:
    """Whether ``name`` (``module``, ``module.attr``, ``Class``, ``Class.member``, ``odenet.x``, ``torch.x``) is in
    the code."""
    parts = name.split(".")
    if parts[0] in EXTERNAL or parts[0] == "nn":
        return _external(parts)
    if parts[0] == "odenet":  # the public face: a name it re-exports, or a module path below it
        if len(parts) == 1:
            return True
        if parts[1] in MODULES["odenet"]:
            return resolves(".".join(parts[1:])) if len(parts) > 2 else True
        parts = parts[1:]
    for i in range(len(parts), 0, -1):  # the longest prefix that is a module
        mod = module(".".join(parts[:i]))
        if mod is not None:
            rest, members = parts[i:], MODULES[mod]
            return not rest or (rest[0] in members and (len(rest) == 1 or (len(rest) == 2 and rest[1] in members[rest[0]])))
    if len(parts) == 1 and parts[0][0].isupper() and _external(["nn", parts[0]]):
        return True  # torch's layers (Linear, ReLU, Sequential)
    for members in MODULES.values():  # a class or function, maybe with a member; or a method of some class
        if parts[0] in members and (len(parts) == 1 or (len(parts) == 2 and parts[1] in members[parts[0]])):
            return True
        if len(parts) == 1 and any(parts[0] in inner for inner in members.values()):
            return True
    return False


def named_in(text: str, bare_calls: bool = True):
    """The code names a page gives in backticks: (name, must it be a module). The modules column of a layer
    table names modules; elsewhere a name is checked when it is anchored (a module, ``odenet.``, a class, torch)
    or plainly code (private, a constant, or called where ``bare_calls``: not on api.md, whose examples call
    their own variables); a variable's attribute (``block.stats``) is not."""
    modules_column = None
    for line in text.splitlines():
        cells = line.split("|") if line.startswith("|") else [line]
        if line.startswith("|") and "modules" in [c.strip() for c in cells]:
            modules_column = [c.strip() for c in cells].index("modules")
        for c, cell in enumerate(cells):
            for token in re.findall(r"`([^`\n]+)`", cell):
                called = "(" in token
                name = token.split("(")[0].strip()
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name) or len(name) == 1 or re.search(
                        r"\.(py|pt|md|yaml|jsonl|png|ipynb)$", name):
                    continue
                head = name.split(".")[0]
                if line.startswith("|") and c == modules_column:
                    yield name, True
                elif "." in name:
                    if head in EXTERNAL or head in ("odenet", "nn") or module(head) or head[0].isupper():
                        yield name, False
                elif (called and bare_calls) or name[0] == "_" or name[0].isupper():
                    yield name, False


@pytest.mark.parametrize("page", ["architecture.md", "api.md"])
def test_every_code_name_a_page_gives_exists(page):
    text = (DOCS / page).read_text()
    names = list(named_in(text, bare_calls=page != "api.md"))
    assert len(names) > 30  # the page was read
    missing = sorted({n for n, is_module in names if is_module and n != "odenet" and module(n) is None}
                     | {n for n, is_module in names if not is_module and not resolves(n)})
    assert not missing, f"docs/{page} names what the code does not have: {missing}"


def test_the_layer_table_places_every_module():
    listed = {n for n, is_module in named_in((DOCS / "architecture.md").read_text()) if is_module}
    assert listed == set(MODULES), (sorted(set(MODULES) - listed), sorted(listed - set(MODULES)))


def test_every_public_name_has_its_section_in_api_md():
    headings = set(re.findall(r"^### `odenet\.([A-Za-z_]+)", (DOCS / "api.md").read_text(), re.M))
    assert set(odenet.__all__) <= headings, sorted(set(odenet.__all__) - headings)
    assert headings <= set(odenet.__all__), sorted(headings - set(odenet.__all__))


def test_the_checker_catches_a_name_that_is_gone():
    """The check itself can fail: invented names do not resolve, real ones do."""
    assert resolves("ode.native.solve") and resolves("checkpoint.open_model") and resolves("ODEBlock.solver")
    assert resolves("Config.ode_solver") and resolves("torchdiffeq.odeint") and resolves("odenet.load")
    for gone in ("ode.frontend", "preprocess.prepare", "Config.solver_of", "ode.engine", "native.run_solver",
                 "ODEFunc.nfe_count", "baseline", "odenet.build_model", "tableaus.NATIVE_METHOD"):
        assert not resolves(gone), gone
    table = "| layer | modules | what |\n|---|---|---|\n| 2 | `config`, `preprocess` | `load` |"
    assert list(named_in(table)) == [("config", True), ("preprocess", True)] and module("preprocess") is None
