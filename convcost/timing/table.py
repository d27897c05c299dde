"""The persistent latency table: finished measurements, reused by later runs.

One SQLite file in the user cache directory (``latency.sqlite``). Rows are keyed by
:func:`convcost.timing.kernel.kernel_key` (module structure, input shapes, dtype, memory format,
backend, device fingerprint with torch/CUDA/cuDNN/oneDNN versions and threads). Paired latency
ratios are stored apart, keyed by (baseline key, variant key).

Safety: every write is one transaction (nothing half-written; two concurrent runs wait for each
other's lock). A file that is not a SQLite database, fails SQLite's integrity check, or carries
another application's id or another schema version is renamed aside (``.bad-TIMESTAMP``) with a
notice and a new table is started; a cache location that cannot be used gives a notice and the
run goes on without the table. Nothing here raises to the caller.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcost.paths import cache_dir

APPLICATION_ID = 0x43435454  # "CCTT": convcost timing table
SCHEMA_VERSION = 1
FILE_NAME = "latency.sqlite"
LOCK_TIMEOUT_S = 30.0

KERNEL_FIELDS = ("key", "label", "scope", "signature", "in_shapes", "dtype", "memory_format",
                 "backend", "cold", "device", "device_name", "compute_capability", "driver",
                 "torch", "cuda", "cudnn", "onednn", "threads", "macs", "median_ms", "q1_ms",
                 "q3_ms", "min_ms", "max_ms", "n", "calls_per_sample", "converged",
                 "graph_median_ms", "measured_at", "convcost")
PAIR_FIELDS = ("base_key", "var_key", "ratio", "lo", "hi", "rounds", "measured_at")

_SCHEMA = f"""
CREATE TABLE kernels (
    key TEXT PRIMARY KEY, label TEXT, scope TEXT, signature TEXT, in_shapes TEXT, dtype TEXT,
    memory_format TEXT, backend TEXT, cold INTEGER, device TEXT, device_name TEXT,
    compute_capability TEXT, driver TEXT, torch TEXT, cuda TEXT, cudnn TEXT, onednn TEXT,
    threads INTEGER, macs INTEGER, median_ms REAL, q1_ms REAL, q3_ms REAL, min_ms REAL,
    max_ms REAL, n INTEGER, calls_per_sample INTEGER, converged INTEGER, graph_median_ms REAL,
    measured_at TEXT, convcost TEXT);
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
            raise _SetAside(f"unreadable ({e})") from e
        except sqlite3.DatabaseError as e:  # "file is not a database", malformed image
            con.close()
            raise _SetAside(f"not a usable SQLite database ({e})") from e
        except _SetAside:
            con.close()
            raise
        return con

    @staticmethod
    def _init(con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")  # serialises two runs creating the table at once
        try:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            ver = con.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
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
        return self._get("SELECT * FROM kernels WHERE key = ?", (key,))

    def get_pair(self, base_key: str, var_key: str) -> dict[str, Any] | None:
        return self._get("SELECT * FROM pairs WHERE base_key = ? AND var_key = ?",
                         (base_key, var_key))

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

    def kernels(self) -> list[dict[str, Any]]:
        """Every stored measurement, newest first."""
        if self.con is None:
            return []
        cur = self.con.execute("SELECT * FROM kernels ORDER BY measured_at DESC, label")
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            d = dict(zip(names, row, strict=True))
            d["in_shapes"] = json.loads(d["in_shapes"]) if d.get("in_shapes") else None
            d["converged"] = bool(d["converged"])
            d["cold"] = bool(d["cold"])
            out.append(d)
        return out

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
        self._write(f"INSERT OR REPLACE INTO kernels ({', '.join(KERNEL_FIELDS)}) VALUES "
                    f"({', '.join('?' * len(KERNEL_FIELDS))})",
                    tuple(vals.get(f) for f in KERNEL_FIELDS))

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
        """Delete every row; returns (kernels, pairs) removed."""
        if self.con is None:
            return 0, 0
        n = self.count()
        self.con.execute("BEGIN IMMEDIATE")
        self.con.execute("DELETE FROM kernels")
        self.con.execute("DELETE FROM pairs")
        self.con.execute("COMMIT")
        self.con.execute("VACUUM")
        return n

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
