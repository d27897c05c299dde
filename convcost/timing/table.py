"""The persistent latency table: finished measurements, reused by later runs.

One SQLite file in the user cache directory (``latency.sqlite``). Rows are keyed by
:func:`convcost.timing.kernel.kernel_key` (module structure, input shapes, dtype, memory format,
backend, device fingerprint with torch/CUDA/cuDNN/oneDNN versions and threads). Paired latency
ratios are stored apart, keyed by (baseline key, variant key).

Safety: every write is one transaction (nothing half-written; two concurrent runs wait for each
other's lock). A file that is not a SQLite database, fails SQLite's integrity check, or carries
another application's id or another schema version is renamed aside (``.bad-TIMESTAMP``) with a
notice and a new table is started; a cache location that cannot be used gives a notice and the
run goes on without the table. The table is never a symbolic link (nor are its journal files):
convcost does not write through a link into another file. A table it may read but not write
is used read-only.

Every row read back is validated (:func:`kernel_problem`, :func:`pair_problem`): finite, positive
and ordered figures, integer counts, shapes that parse. An invalid row is ignored with one
notice naming it, and measured again; no value read from the table reaches a report unchecked.
Nothing here raises to the caller, except :meth:`LatencyTable.clear` (one line, exit 2).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import math
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcost.errors import InputError
from convcost.figures import Lowering
from convcost.paths import cache_dir

APPLICATION_ID = 0x43435454  # "CCTT": convcost timing table
SCHEMA_VERSION = 3
# columns added since schema 1, by the version that added them (an older table gains them in
# place, its figures kept): (name, SQL type); a row stored before has them NULL. 2: tail
# percentiles and the pass (NULL: inference); 3: the backend's readable id (runtime, version,
# delegate, threads) and what a delegate took of the kernel (NULL: no delegate)
ADDED_V2 = (("p10_ms", "REAL"), ("p90_ms", "REAL"), ("p99_ms", "REAL"), ("pass", "TEXT"))
ADDED_V3 = (("backend_id", "TEXT"), ("delegate", "TEXT"), ("delegated_nodes", "INTEGER"),
            ("portable_nodes", "INTEGER"), ("portable_ops", "TEXT"))
ADDED = {2: ADDED_V2, 3: ADDED_V3}
FILE_NAME = "latency.sqlite"
LOCK_TIMEOUT_S = 30.0

KERNEL_FIELDS = ("key", "label", "scope", "signature", "in_shapes", "dtype", "memory_format",
                 "backend", "cold", "device", "device_name", "compute_capability", "driver",
                 "torch", "cuda", "cudnn", "onednn", "threads", "macs", "median_ms", "q1_ms",
                 "q3_ms", "min_ms", "max_ms", "n", "calls_per_sample", "converged",
                 "graph_median_ms", "measured_at", "convcost")
# stored, exported and imported when present; an export of an older convcost lacks them
OPTIONAL_KERNEL_FIELDS = tuple(name for cols in ADDED.values() for name, _ in cols)
PASSES = ("inference", "training")  # what a timed call is (--pass); training: + backward
PAIR_FIELDS = ("base_key", "var_key", "ratio", "lo", "hi", "rounds", "measured_at")

_SCHEMA = f"""
CREATE TABLE kernels (
    key TEXT PRIMARY KEY, label TEXT, scope TEXT, signature TEXT, in_shapes TEXT, dtype TEXT,
    memory_format TEXT, backend TEXT, cold INTEGER, device TEXT, device_name TEXT,
    compute_capability TEXT, driver TEXT, torch TEXT, cuda TEXT, cudnn TEXT, onednn TEXT,
    threads INTEGER, macs INTEGER, median_ms REAL, q1_ms REAL, q3_ms REAL, min_ms REAL,
    max_ms REAL, n INTEGER, calls_per_sample INTEGER, converged INTEGER, graph_median_ms REAL,
    measured_at TEXT, convcost TEXT,
    {", ".join(f"{n} {t}" for cols in ADDED.values() for n, t in cols)});
CREATE TABLE pairs (
    base_key TEXT, var_key TEXT, ratio REAL, lo REAL, hi REAL, rounds INTEGER, measured_at TEXT,
    PRIMARY KEY (base_key, var_key));
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""


def default_path() -> Path:
    return cache_dir() / FILE_NAME


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _SetAside(Exception):
    """The file is not ours (or is damaged): move it out of the way."""


@dataclass
class LatencyTable:
    """Open with :meth:`open`; a disabled table (``con is None``) answers nothing, stores nothing."""

    path: Path | None
    con: sqlite3.Connection | None = None
    notices: list[str] = field(default_factory=list)
    writable: bool = True

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | None = None) -> LatencyTable:
        """Open (creating it if needed) the table at ``path`` (default: the cache directory)."""
        t = cls(path or default_path())
        assert t.path is not None
        try:
            t.con = t._connect()
        except _SetAside as e:
            t._set_aside(str(e))
        except (OSError, sqlite3.Error) as e:
            t._disable(e)
        return t

    @classmethod
    def disabled(cls) -> LatencyTable:
        return cls(None)

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        for p in (self.path, *(self.path.with_name(self.path.name + x)
                               for x in ("-journal", "-wal", "-shm"))):
            if p.is_symlink():
                raise OSError(f"{p} is a symbolic link; convcost never writes through a link in "
                              "its cache")
        if self.path.exists() and not self.path.is_file():
            raise OSError(f"{self.path} is not a regular file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(self.path), timeout=LOCK_TIMEOUT_S, isolation_level=None)
        try:
            self._init(con)
        except sqlite3.OperationalError as e:
            con.close()
            if "locked" in str(e) or "busy" in str(e):
                raise
            if "readonly" in str(e) and self.path.is_file():
                return self._read_only()
            raise _SetAside(f"unreadable ({e})") from e
        except sqlite3.DatabaseError as e:  # "file is not a database", malformed image
            con.close()
            raise _SetAside(f"not a usable SQLite database ({e})") from e
        except _SetAside:
            con.close()
            raise
        return con

    def _read_only(self) -> sqlite3.Connection:
        """A table this process may read but not write: figures are reused, none stored."""
        assert self.path is not None
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=LOCK_TIMEOUT_S,
                              isolation_level=None)
        try:
            app = con.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.Error:
            con.close()
            raise
        if app != APPLICATION_ID:
            con.close()
            raise OSError(f"{self.path} is read-only and not a convcost latency table")
        self.writable = False
        self.notices.append(f"latency table {self.path} is read-only: stored figures are reused, "
                            "new ones are not kept")
        return con

    @staticmethod
    def _init(con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")  # serialises two runs creating the table at once
        try:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            ver = con.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if app == APPLICATION_ID and 1 <= ver < SCHEMA_VERSION and \
                    {"kernels", "pairs"} <= tables:
                for v in range(ver + 1, SCHEMA_VERSION + 1):  # new columns, figures kept
                    for name, kind in ADDED[v]:
                        con.execute(f"ALTER TABLE kernels ADD COLUMN {name} {kind}")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                ver = SCHEMA_VERSION
            if app == APPLICATION_ID and ver == SCHEMA_VERSION and {"kernels", "pairs"} <= tables:
                check = con.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise _SetAside(f"damaged (integrity check: {check})")
            elif app == 0 and ver == 0 and not tables:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        con.execute(stmt)
            else:
                raise _SetAside(f"another schema (application id {app:#x}, version {ver}; this "
                                f"convcost writes {APPLICATION_ID:#x} version {SCHEMA_VERSION})")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _set_aside(self, why: str) -> None:
        assert self.path is not None
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        moved = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        try:
            self.path.rename(moved)
            what = f"moved to {moved}"
        except FileNotFoundError:  # another run moved it first
            what = "already moved by another run"
        except OSError as e:
            self._disable(e)
            return
        self.notices.append(f"latency table {self.path} was {why}; {what}; starting a new one")
        try:
            self.con = self._connect()
        except (OSError, sqlite3.Error, _SetAside) as e:
            self._disable(e)

    def _disable(self, e: BaseException) -> None:
        self.con = None
        self.notices.append(f"latency table {self.path} cannot be used ({_why(e)}): timings are "
                            "measured but not stored; set CONVCOST_CACHE_DIR to a writable folder")

    # -- reads --------------------------------------------------------------------------------
    def get_kernel(self, key: str) -> dict[str, Any] | None:
        """The stored measurement of ``key``; None when absent or invalid (with a notice)."""
        return self._valid(self._get("SELECT * FROM kernels WHERE key = ?", (key,)),
                           kernel_problem)

    def get_pair(self, base_key: str, var_key: str) -> dict[str, Any] | None:
        return self._valid(self._get("SELECT * FROM pairs WHERE base_key = ? AND var_key = ?",
                                     (base_key, var_key)), pair_problem)

    def _valid(self, row: dict[str, Any] | None, problem: Any) -> dict[str, Any] | None:
        if row is None:
            return None
        why = problem(row)
        if why is None:
            return row
        label = row.get("label") if isinstance(row.get("label"), str) else None
        name = f"{label!r}" if label else f"key {str(row.get('key') or row.get('var_key'))[:16]}"
        self.notices.append(f"latency table {self.path}: ignored an invalid row for {name} "
                            f"({why}); measured again")
        return None

    def _get(self, sql: str, args: tuple[Any, ...]) -> dict[str, Any] | None:
        if self.con is None:
            return None
        try:
            cur = self.con.execute(sql, args)
            row = cur.fetchone()
        except sqlite3.Error as e:
            self._disable(e)
            return None
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))

    def _all(self, sql: str, problem: Any) -> list[dict[str, Any]]:
        """Every row ``sql`` selects that ``problem`` finds valid (the others left out with a
        notice)."""
        if self.con is None:
            return []
        try:
            cur = self.con.execute(sql)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        except sqlite3.Error as e:
            self._disable(e)
            return []
        return [d for row in rows
                if (d := self._valid(dict(zip(names, row, strict=True)), problem))]

    def kernels(self) -> list[dict[str, Any]]:
        """Every stored measurement, newest first."""
        out = self._all("SELECT * FROM kernels ORDER BY measured_at DESC, label", kernel_problem)
        for d in out:
            d["in_shapes"] = json.loads(d["in_shapes"]) if d.get("in_shapes") else None
            d["converged"] = bool(d["converged"])
            d["cold"] = bool(d["cold"])
        return out

    def pairs(self) -> list[dict[str, Any]]:
        """Every stored paired ratio (invalid ones left out with a notice)."""
        return self._all("SELECT * FROM pairs ORDER BY measured_at DESC", pair_problem)

    def find_kernel(self, what: dict[str, Any]) -> dict[str, Any] | None:
        """The newest valid measurement of the same kernel on a device named in ``what``
        (signature, in_shapes, dtype, memory_format, backend, cold, device_name, threads):
        how a plan reads another device's figures (its keys hold that device's fingerprint)."""
        cols = ("signature", "in_shapes", "dtype", "memory_format", "backend", "cold",
                "device_name", "threads")
        args = tuple(json.dumps(what[c]) if c == "in_shapes" else
                     (int(what[c]) if c == "cold" else what[c]) for c in cols)
        return self._valid(self._get(
            "SELECT * FROM kernels WHERE " + " AND ".join(f"{c} IS ?" for c in cols)
            + " ORDER BY measured_at DESC LIMIT 1", args), kernel_problem)

    def devices(self) -> list[dict[str, Any]]:
        """The (device, device_name, threads, torch) combinations the table holds figures for."""
        if self.con is None:
            return []
        try:
            cur = self.con.execute("SELECT device, device_name, threads, torch, COUNT(*), "
                                   "MAX(measured_at) FROM kernels GROUP BY device, "
                                   "device_name, threads, torch")
            return [dict(zip(("device", "device_name", "threads", "torch", "rows", "newest"), r,
                             strict=True)) for r in cur.fetchall()]
        except sqlite3.Error as e:
            self._disable(e)
            return []

    def count(self) -> tuple[int, int]:
        """(kernel rows, pair rows)."""
        if self.con is None:
            return 0, 0
        k = self.con.execute("SELECT COUNT(*) FROM kernels").fetchone()[0]
        p = self.con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
        return int(k), int(p)

    # -- writes -------------------------------------------------------------------------------
    def put_kernel(self, row: dict[str, Any]) -> None:
        """Store one measurement (a dict with :data:`KERNEL_FIELDS`), replacing an older one."""
        vals = dict(row)
        vals["in_shapes"] = json.dumps(vals.get("in_shapes"))
        vals["converged"] = int(bool(vals.get("converged")))
        vals["cold"] = int(bool(vals.get("cold")))
        fields = (*KERNEL_FIELDS, *OPTIONAL_KERNEL_FIELDS)
        self._write(f"INSERT OR REPLACE INTO kernels ({', '.join(fields)}) VALUES "
                    f"({', '.join('?' * len(fields))})", tuple(vals.get(f) for f in fields))

    def put_pair(self, base_key: str, var_key: str, ratio: float, lo: float, hi: float,
                 rounds: int, measured_at: str) -> None:
        self._write(f"INSERT OR REPLACE INTO pairs ({', '.join(PAIR_FIELDS)}) VALUES "
                    f"({', '.join('?' * len(PAIR_FIELDS))})",
                    (base_key, var_key, ratio, lo, hi, rounds, measured_at))

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        if self.con is None or not self.writable:
            return
        try:
            self.con.execute("BEGIN IMMEDIATE")
            self.con.execute(sql, args)
            self.con.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                if self.con.in_transaction:
                    self.con.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.writable = False
            self.notices.append(f"latency table {self.path}: cannot store measurements "
                                f"({_why(e)}); this run's figures are reported but not kept")

    def clear(self) -> tuple[int, int]:
        """Delete every row; returns (kernels, pairs) removed. A table that cannot be used or
        written is an :class:`InputError` naming it (exit 2), never "removed 0"."""
        if self.con is None or not self.writable:
            why = "; ".join(self.notices) or f"latency table {self.path} cannot be used"
            raise InputError(f"cannot clear the latency table: {why}")
        try:
            n = self.count()
            self.con.execute("BEGIN IMMEDIATE")
            self.con.execute("DELETE FROM kernels")
            self.con.execute("DELETE FROM pairs")
            self.con.execute("COMMIT")
            self.con.execute("VACUUM")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                if self.con.in_transaction:
                    self.con.execute("ROLLBACK")
            raise InputError(f"{self.path}: cannot clear the latency table ({_why(e)})") from e
        return n

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


_POSITIVE_MS = ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms")
_TEXT = ("key", "label", "scope", "signature", "dtype", "memory_format", "backend", "device",
         "torch", "measured_at")


MAX_MS = 1e7  # about 3 hours for one call: beyond it a stored figure is not a measurement
RATIO_RANGE = (1e-6, 1e6)  # a paired latency ratio outside it is not one either


def _finite(v: Any, positive: bool = True) -> bool:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (v > 0 if positive else v >= 0)


def _ms(v: Any) -> bool:
    return _finite(v) and v <= MAX_MS


def _count(v: Any, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v < 2**53


def kernel_problem(d: dict[str, Any]) -> str | None:
    """Why a stored measurement cannot be used, or None: figures finite, positive and ordered
    (min <= q1 <= median <= q3 <= max), counts positive integers, shapes a list of positive
    integer lists, the key and labels text."""
    for f in _TEXT:
        if not isinstance(d.get(f), str):
            return f"{f} is {str(d.get(f))[:20]!r}, not text"
    for f in _POSITIVE_MS:
        if not _ms(d.get(f)):
            return f"{f} is {str(d.get(f))[:20]}"
    if not d["min_ms"] <= d["q1_ms"] <= d["median_ms"] <= d["q3_ms"] <= d["max_ms"]:
        return "quartiles out of order"
    if not _count(d.get("n")) or not _count(d.get("calls_per_sample")) or \
            (d.get("threads") is not None and not _count(d.get("threads"))):
        return "a sample, call or thread count is not a positive integer"
    if d.get("macs") is not None and not _count(d["macs"], 0):
        return f"macs is {str(d['macs'])[:20]}"
    if d.get("graph_median_ms") is not None and not _ms(d["graph_median_ms"]):
        return f"graph_median_ms is {str(d['graph_median_ms'])[:20]}"
    why = _tails_problem(d) or _lowering_problem(d)
    if why:
        return why
    try:
        shapes = json.loads(d["in_shapes"]) if isinstance(d.get("in_shapes"), str) else None
    except (ValueError, RecursionError):
        return "in_shapes is not JSON"
    if not isinstance(shapes, list) or not all(
            isinstance(s, list) and all(_count(x) for x in s) for s in shapes):
        return "in_shapes is not a list of shapes"
    return None


def _tails_problem(d: dict[str, Any]) -> str | None:
    """Tail percentiles, when stored: finite, min <= p10 <= q1 and q3 <= p90 <= p99 <= max;
    the pass one of :data:`PASSES`."""
    for f in ("p10_ms", "p90_ms", "p99_ms"):
        if d.get(f) is not None and not _ms(d[f]):
            return f"{f} is {str(d[f])[:20]}"
    chain = [d["min_ms"], d.get("p10_ms"), d["q1_ms"], d["q3_ms"], d.get("p90_ms"),
             d.get("p99_ms"), d["max_ms"]]
    known = [v for v in chain if v is not None]
    if any(a > b * (1 + 1e-9) for a, b in itertools.pairwise(known)):
        return "tail percentiles out of order"
    if d.get("pass") is not None and d["pass"] not in PASSES:
        return f"pass is {str(d['pass'])[:20]!r}"
    return None


def _lowering_problem(d: dict[str, Any]) -> str | None:
    """The backend id and a delegate's node counts, when stored: text, and non-negative
    integer counts beside a delegate's name."""
    for f in ("backend_id", "delegate", "portable_ops"):
        if d.get(f) is not None and not isinstance(d[f], str):
            return f"{f} is {str(d[f])[:20]!r}, not text"
    if d.get("delegate") is not None and not (_count(d.get("delegated_nodes"), 0)
                                             and _count(d.get("portable_nodes"), 0)):
        return "a delegate's node count is not a non-negative integer"
    return None


def lowering_fields(lowering: Lowering | None) -> dict[str, Any]:
    """The latency table's columns for what a delegate took of a kernel (all None: none)."""
    if lowering is None:
        return {"delegate": None, "delegated_nodes": None, "portable_nodes": None,
                "portable_ops": None}
    return {"delegate": lowering.delegate, "delegated_nodes": lowering.delegated_nodes,
            "portable_nodes": lowering.portable_nodes,
            "portable_ops": ",".join(lowering.portable_ops)}


def stored_lowering(row: dict[str, Any]) -> Lowering | None:
    """A validated row's :class:`~convcost.figures.Lowering` (None: no delegate)."""
    if row.get("delegate") is None:
        return None
    ops = tuple(o for o in (row.get("portable_ops") or "").split(",") if o)
    return Lowering(row["delegate"], row["delegated_nodes"], row["portable_nodes"], ops)


_KEY = re.compile(r"^[0-9a-f]{32}$")
MAX_TEXT = 4096  # the longest text field an imported row may hold


def imported_kernel_problem(d: Any) -> str | None:
    """Why a measurement from another machine's export cannot be imported (None: it can):
    a mapping with every stored field, a 32-hex key, bounded text, and everything
    :func:`kernel_problem` checks of a stored row."""
    if not isinstance(d, dict):
        return "not a mapping"
    missing = [f for f in KERNEL_FIELDS if f not in d]
    if missing:
        return f"missing {', '.join(missing[:4])}"
    if not isinstance(d["key"], str) or not _KEY.match(d["key"]):
        return "key is not 32 hexadecimal digits"
    if any(isinstance(d.get(f), str) and len(d[f]) > MAX_TEXT
           for f in (*KERNEL_FIELDS, *OPTIONAL_KERNEL_FIELDS)):
        return f"a text field is longer than {MAX_TEXT} characters"
    if not isinstance(d["in_shapes"], list) or not isinstance(d["converged"], bool) or \
            not isinstance(d["cold"], bool):
        return "in_shapes, converged or cold has the wrong type"
    try:
        shapes = json.dumps(d["in_shapes"])
    except (TypeError, ValueError, RecursionError):
        return "in_shapes is not a list of shapes"
    return kernel_problem({**d, "in_shapes": shapes})


def imported_pair_problem(d: Any) -> str | None:
    if not isinstance(d, dict):
        return "not a mapping"
    if not all(isinstance(d.get(k), str) and _KEY.match(d[k]) for k in ("base_key", "var_key")):
        return "base_key or var_key is not 32 hexadecimal digits"
    if isinstance(d.get("measured_at"), str) and len(d["measured_at"]) > MAX_TEXT:
        return "measured_at is too long"
    return pair_problem(d)


def pair_problem(d: dict[str, Any]) -> str | None:
    """Why a stored paired ratio cannot be used: finite lo <= ratio <= hi within
    ``RATIO_RANGE``, a positive round count."""
    lo_ok, hi_ok = RATIO_RANGE
    if not all(_finite(d.get(f)) and lo_ok <= d[f] <= hi_ok for f in ("ratio", "lo", "hi")):
        return f"ratio {str(d.get('ratio'))[:20]} [{str(d.get('lo'))[:20]}, {str(d.get('hi'))[:20]}]"
    if not d["lo"] <= d["ratio"] <= d["hi"]:
        return "the ratio lies outside its interval"
    if not _count(d.get("rounds")) or not isinstance(d.get("measured_at"), str):
        return "rounds is not a positive integer"
    return None


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
