"""The package's layers: no import cycle, no module importing a higher layer, every module placed (tools/imports.py)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("odenet_imports_tool", ROOT / "tools" / "imports.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_layers_hold(capsys):
    assert _tool().main([]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert out.strip().endswith("0 problems") and "ode.integrate -> " in out


def test_the_check_sees_a_cycle_and_an_upward_import(monkeypatch, capsys):
    tool = _tool()
    real = tool.imports

    def with_bad_edges(name, path, mods):
        found = set(real(name, path, mods))
        if name == "ode.native":
            found.add("model")  # upward: the engine importing the network
        if name == "errors":
            found.add("files")
        if name == "files":
            found.add("errors")  # a circle within one layer
        return found

    monkeypatch.setattr(tool, "imports", with_bad_edges)
    assert tool.main([]) == 1
    out = capsys.readouterr().out
    assert "upward import: ode.native (layer 1) imports model (layer 3)" in out
    assert "import cycle: errors -> files -> errors" in out


def test_ode_functions_are_short():
    """No function in odenet/ode is over 60 lines (the engine reads in pieces)."""
    import ast

    long = []
    for path in (ROOT / "odenet" / "ode").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.name}:{node.name}")
    assert not long, long
