"""The README's console blocks, regenerated from real runs and checked against the tool.

    python tools/readme_blocks.py --write   # run every block's commands for real, rewrite outputs
    python tools/readme_blocks.py --write --only "--backend"   # just the blocks naming it
    python tools/readme_blocks.py --check   # what CI runs (tests/test_readme.py): counted figures

A console block is a list of ``$ command`` lines, each followed by its output. ``$ cat FILE``
shows a file: its content is the README's, written before the next command runs. Commands run
in a scratch folder (``examples`` and ``docs`` linked in) with an empty cache, through
``python -m convcost`` (pipes: the natural-width rendering), stdout then stderr without the
progress lines.

--check re-runs each command without timing (``--no-time`` added, ``--plot`` dropped), so it
is fast and deterministic:
- a block whose command does not time is compared line by line, exactly;
- a timed block is compared table by table, row by row, on the columns both renderings have
  (params, MACs, ratios, formulas, verdicts, ...): every counted figure the README shows must
  be the tool's. Latency columns and rows whose figures are latencies are not compared.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```console\n(.*?)^```\n", re.S | re.M)
PROGRESS = re.compile(r"^\w[\w ]*(: \d+ \w+ to measure| \d+/\d+ \w+, \d+ s left)")
TIME_VALUE = re.compile(r"\b\d+(\.\d+)? (ns|us|ms|s)\b")
# columns whose figures come from timing: never compared
TIMED_COLUMNS = {"latency", "±IQR", "TFLOP/s", "GB/s", "latency ratio", "headline", "note",
                 "notes", "% bound", "bound", "bound ms", "time", "p90", "p99", "per sample",
                 "threads"}
TIMED_COMMANDS = ("analyze", "compare", "check")


@dataclass
class Command:
    line: str  # without the "$ "
    output: str


@dataclass
class Block:
    start: int  # offsets of the block's body in the README
    end: int
    commands: list[Command] = field(default_factory=list)


def parse(text: str) -> list[Block]:
    out = []
    for m in BLOCK.finditer(text):
        b = Block(m.start(1), m.end(1))
        for line in m.group(1).splitlines():
            if line.startswith("$ "):
                b.commands.append(Command(line[2:], ""))
            elif b.commands:
                b.commands[-1].output += line + "\n"
        out.append(b)
    return out


def render(b: Block) -> str:
    return "".join(f"$ {c.line}\n{c.output}" for c in b.commands)


def _timed(argv: list[str]) -> bool:
    return bool(argv) and argv[0] in TIMED_COMMANDS and "--no-time" not in argv


def _untimed(argv: list[str]) -> list[str]:
    """The same command without timing (and without a plot to write or backends to time on)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--plot", "--backend"):
            skip = True
            continue
        if a.startswith(("--plot=", "--backend=")):
            continue
        out.append(a)
    return [*out, "--no-time"] if _timed(argv) else out


def _jq(text: str, expr: str) -> str:
    """The ``jq .a.b`` subset the README uses."""
    doc = json.loads(text)
    for key in [k for k in expr.strip().split(".") if k]:
        doc = doc[key]
    return json.dumps(doc, indent=2) + "\n"


def run(line: str, cwd: Path, env: dict[str, str], *, untimed: bool) -> str:
    """Run one README command line; its output as the README shows it."""
    parts = [p.strip() for p in line.split("|")]
    argv = shlex.split(parts[0])
    if argv[0] == "cat":  # shown, not run: the README's content is the file
        return ""
    if argv[0] != "convcost":
        raise ValueError(f"README command not understood: {line}")
    args = _untimed(argv[1:]) if untimed else argv[1:]
    p = subprocess.run([sys.executable, "-m", "convcost", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    err = "".join(x + "\n" for x in p.stderr.splitlines() if not PROGRESS.match(x))
    out = p.stdout
    for pipe in parts[1:]:
        cmd = shlex.split(pipe)
        if cmd[0] != "jq" or len(cmd) != 2:
            raise ValueError(f"README pipe not understood: {pipe}")
        out = _jq(out, cmd[1])
    return out + err


def _scratch() -> tuple[tempfile.TemporaryDirectory, Path, dict[str, str]]:
    tmp = tempfile.TemporaryDirectory(prefix="convcost-readme-")
    cwd = Path(tmp.name) / "work"
    cwd.mkdir()
    for name in ("examples", "docs"):
        (cwd / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    env.update({"CONVCOST_CACHE_DIR": str(Path(tmp.name) / "cache"), "NO_COLOR": "1",
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
    env.pop("CONVCOST_ISOLATION", None)
    return tmp, cwd, env


def _files(c: Command, cwd: Path) -> None:
    argv = shlex.split(c.line)
    if argv[0] == "cat" and len(argv) == 2:
        (cwd / argv[1]).write_text(c.output, encoding="utf-8")


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[dict[str, str]]


def tables(text: str) -> list[Table]:
    """Every rendered table: the header above a rule of '─', rows below it (indented lines)."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip() or set(line.strip()) != {"─"} or i == 0:
            continue
        body = []
        for nxt in lines[i + 1:]:
            if nxt and not nxt.startswith(" "):
                break
            body.append(nxt)
        while body and not body[-1].strip():
            body.pop()
        header = lines[i - 1]
        title = next((x for x in reversed(lines[:i - 1]) if x and not x.startswith(" ")), "")
        spans = _columns([header, *[b for b in body if b.strip()]])
        cols = [header[a:b].strip() for a, b in spans]
        rows = [{c: b[s:e].strip() for c, (s, e) in zip(cols, spans, strict=True)}
                for b in body if b.strip()]
        out.append(Table(title, cols, rows))
    return out


def _columns(lines: list[str]) -> list[tuple[int, int]]:
    """Column spans: separated by runs of 2+ positions that are blank on every line."""
    width = max(len(x) for x in lines)
    blank = [all(i >= len(x) or x[i] == " " for x in lines) for i in range(width)]
    spans, start, i = [], None, 0
    while i < width:
        if blank[i]:
            j = i
            while j < width and blank[j]:
                j += 1
            if start is not None and (j - i >= 2 or j == width):
                spans.append((start, i))
                start = None
            i = j
            continue
        if start is None:
            start = i
        i += 1
    if start is not None:
        spans.append((start, width))
    return spans


def _key(t: Table, row: dict[str, str], seen: dict[str, int]) -> str:
    """A row's identity: its first non-empty cells (layer and variant in compare's layer rows)."""
    cells = [row[c] for c in t.columns[:2]]
    k = " | ".join(cells)
    seen[k] = seen.get(k, 0) + 1
    return f"{k} #{seen[k]}"


def _timed_column(name: str) -> bool:
    """Latency columns, per backend too ('latency eager', 'latency ratio onnxruntime')."""
    return name in TIMED_COLUMNS or name.startswith("latency ")


def compare_tables(shown: str, live: str) -> list[str]:
    """The counted figures of the README's tables that the tool's output does not have."""
    problems = []
    a, b = tables(shown), tables(live)
    if [t.title for t in a] != [t.title for t in b]:
        return [f"tables differ: README {[t.title for t in a]} vs tool {[t.title for t in b]}"]
    for ta, tb in zip(a, b, strict=True):
        shared = [c for c in ta.columns if c and c in tb.columns and not _timed_column(c)]
        ka: dict[str, int] = {}
        kb: dict[str, int] = {}
        rows_b = {_key(tb, r, kb): r for r in tb.rows}
        keys_a = []
        for ra in ta.rows:
            k = _key(ta, ra, ka)
            keys_a.append(k)
            rb = rows_b.get(k)
            if rb is None:
                problems.append(f"{ta.title}: row {k!r} is not in the tool's output")
                continue
            if any(TIME_VALUE.search(ra[c]) for c in shared):
                continue  # a latency row (check's latency limits): timing, not counting
            for c in shared:
                if ra[c] != rb[c]:
                    problems.append(f"{ta.title}: row {k!r}, {c}: README {ra[c]!r}, tool {rb[c]!r}")
        missing = [k for k in rows_b if k not in keys_a]
        if missing:
            problems.append(f"{ta.title}: the tool has rows the README lacks: {missing}")
    return problems


def check(text: str | None = None) -> list[str]:
    """Problems found in the README's console blocks (empty when every figure matches)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    tmp, cwd, env = _scratch()
    problems: list[str] = []
    with tmp:
        for b in parse(text):
            for c in b.commands:
                _files(c, cwd)
                live = run(c.line, cwd, env, untimed=True)
                if shlex.split(c.line)[0] == "cat":
                    continue
                argv = shlex.split(c.line.split("|")[0])[1:]
                if _timed(argv) and tables(c.output):
                    found = compare_tables(c.output, live)
                else:  # counts only, or an error line: the whole output is deterministic
                    found = [] if _norm(c.output) == _norm(live) else [_diff(c.output, live)]
                problems += [f"$ {c.line}: {p}" for p in found]
    return problems


def _norm(s: str) -> list[str]:
    return [x.rstrip() for x in s.rstrip("\n").splitlines()]


def _diff(a: str, b: str) -> str:
    import difflib

    d = difflib.unified_diff(_norm(a), _norm(b), "README", "tool", lineterm="", n=1)
    return "output differs:\n" + "\n".join(list(d)[:40])


def write(only: str | None = None) -> None:
    """Run every block's commands for real (timed ones timed) and rewrite their output; with
    ``only``, just the blocks with a command containing that text."""
    text = README.read_text(encoding="utf-8")
    blocks = parse(text)
    tmp, cwd, env = _scratch()
    with tmp:
        for b in blocks:
            if only is not None and not any(only in c.line for c in b.commands):
                continue
            for c in b.commands:
                _files(c, cwd)
                if shlex.split(c.line)[0] != "cat":
                    print(f"$ {c.line}", file=sys.stderr)
                    c.output = run(c.line, cwd, env, untimed=False)
    for b in reversed(blocks):
        text = text[:b.start] + render(b) + text[b.end:]
    README.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        write()
        return 0
    if len(argv) == 3 and argv[:2] == ["--write", "--only"]:
        write(argv[2])
        return 0
    if argv in ([], ["--check"]):
        problems = check()
        for p in problems:
            print(p)
        print(f"README console blocks: {len(problems)} problem(s)")
        return 1 if problems else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
