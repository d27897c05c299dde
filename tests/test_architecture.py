"""The code's shape (docs/architecture.md): no import cycle inside convcost/, no function body
over 60 lines (a comment says why where one must be longer), a thin cli.py."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

from tests.conftest import ROOT

PKG = ROOT / "convcost"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every convcost module each module imports, at the top or inside a function."""
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for name, p in mods.items():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("convcost"):
                graph[name].update(f"{n.module}.{a.name}" for a in n.names
                                   if f"{n.module}.{a.name}" in mods)
                if n.module in mods:
                    graph[name].add(n.module)
            elif isinstance(n, ast.Import):
                graph[name].update(a.name for a in n.names if a.name in mods)
    return graph


def _cycles(graph: dict[str, set[str]], nodes: list[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle():
    mods = _modules()
    assert _cycles(_imports(mods), sorted(mods)) == []


def _bodies(path: Path):
    """(name, first line, body lines) of every function, the docstring excluded."""
    lines = path.read_text().splitlines()
    for n in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = n.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and \
                    isinstance(body[0].value, ast.Constant):
                body = body[1:]
            yield n.name, n.lineno, n.end_lineno - body[0].lineno + 1, lines[max(0, n.lineno - 4):n.lineno]


def test_no_function_body_over_60_lines():
    """A longer one needs a ``# long: why`` comment just above its ``def``."""
    long = []
    for p in PKG.rglob("*.py"):
        for name, line, size, above in _bodies(p):
            if size > 60 and not any("# long:" in a for a in above):
                long.append(f"{p.relative_to(ROOT)}:{line} {name} ({size} lines)")
    assert long == []


def test_cli_is_thin():
    cli = PKG / "cli.py"
    assert len(cli.read_text().splitlines()) < 450
    commands = [name for name, _, size, above in _bodies(cli) if size > 30]
    tree = ast.parse(cli.read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and any(
        "command" in ast.unparse(d) for d in n.decorator_list)}
    assert len(names) >= 8
    assert [c for c in commands if c in names] == []
