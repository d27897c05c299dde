"""The timing engine: each unique kernel measured once, paired ratios, a time budget, a cache.

Callers register *groups*: a list of :class:`~convcost.timing.kernel.Kernel` (with ``paired``,
the first is the baseline and the others are its variants). The engine

- keys every kernel (:func:`~convcost.timing.kernel.kernel_key`); identical groups are measured
  once, a variant identical to its baseline is not measured at all (``same``), and a kernel
  already measured in this run keeps its first figure;
- reuses the persistent latency table (:mod:`convcost.timing.table`) unless ``fresh``, and
  stores what it measured (with at least ``min_samples`` samples, or ``min_rounds`` rounds for
  a ratio);
- measures the rest group by group in interleaved rounds (:func:`measure_group`), paired ratios
  with bootstrap intervals for variants;
- splits the whole-run ``budget_s`` over what is still to measure: after a group's warm-up each
  callable's sampling cap is set by water-filling (equal sample counts where possible, at least
  ``min_samples`` samples, never above ``max_time_s``); when the budget runs out the rest is
  marked ``budget`` (not measured);
- stops cleanly on Ctrl-C (``interrupted``), keeping what finished.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from convcost import __version__
from convcost.counting.passes import training_mode
from convcost.figures import Lowering, MachineState
from convcost.timing import backends
from convcost.timing.canary import INTERVAL_S, Canaries
from convcost.timing.defaults import DEFAULT_BUDGET_S
from convcost.timing.device import fingerprint, numerics
from convcost.timing.harness import Bench, Measurement, TimingConfig, measure_group
from convcost.timing.kernel import Kernel, kernel_key
from convcost.timing.machine import MIN_WINDOW_S, Snapshot, gpu_state, snapshot, window
from convcost.timing.stats import PairedRatio, paired_ratio
from convcost.timing.status import Status
from convcost.timing.table import LatencyTable, lowering_fields, now_iso, stored_lowering
from convcost.timing.training import TrainStep, check_step, targets_of

MEASURED, CACHED, SAME, FAILED, BUDGET, INTERRUPTED, PENDING, ABSENT, UNSUPPORTED = (
    Status.MEASURED, Status.CACHED, Status.SAME, Status.FAILED, Status.BUDGET,
    Status.INTERRUPTED, Status.PENDING, Status.ABSENT, Status.UNSUPPORTED)
CPU_MACS_PER_S = 3e10  # rough speeds, only to split the budget before a kernel's first call
CUDA_MACS_PER_S = 2e13
CALL_OVERHEAD_S = 2e-5


class Progress(Protocol):
    def start(self, total: int, budget_s: float | None = None,
              what: str | None = None) -> None: ...
    def advance(self, label: str) -> None: ...


class NoProgress:
    def start(self, total: int, budget_s: float | None = None,
              what: str | None = None) -> None:
        pass

    def advance(self, label: str) -> None:
        pass


@dataclass
class KernelResult:
    """A kernel's figure: measured in this run, reused from the table, or why there is none."""

    status: str = PENDING
    measurement: Measurement | None = None
    cached_at: str | None = None
    error: str | None = None
    setup_s: float | None = None  # compile / export / session time (non-eager backends)
    check: dict[str, Any] | None = None  # the output check against eager (non-eager backends)
    machine: MachineState | None = None  # what competed while it was measured (None: cached)
    lowering: Lowering | None = None  # what a delegate took of the kernel (executorch)

    @property
    def median_ms(self) -> float | None:
        return self.measurement.median_ms if self.measurement else None


@dataclass
class PairResult:
    status: str = PENDING
    ratio: PairedRatio | None = None
    cached_at: str | None = None
    machine: MachineState | None = None  # the rounds' window (None: cached)


@dataclass
class Group:
    kernels: list[Kernel]
    keys: list[str]
    paired: bool
    label: str


def _fill(lam: float, items: Sequence[tuple[float, float, float]]) -> float:
    return sum(min(cap, max(floor, lam * w)) for w, floor, cap in items)


def water_fill(total: float, items: Sequence[tuple[float, float, float]]) -> float:
    """The level ``lam`` at which ``sum(clamp(lam * w, floor, cap)) == total`` (items are
    (weight, floor, cap)); ``inf`` when even the caps fit."""
    if _fill(float("inf"), items) <= total:
        return float("inf")
    lo, hi = 0.0, 1.0
    while _fill(hi, items) < total and hi < 1e12:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if _fill(mid, items) < total:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class TimingEngine:
    """See the module docstring. Use: ``add_group`` for everything, ``run()``, then read
    ``kernel(key)`` / ``pair(base_key, var_key)``."""

    cfg: TimingConfig
    table: LatencyTable = field(default_factory=LatencyTable.disabled)
    budget_s: float | None = DEFAULT_BUDGET_S
    fresh: bool = False
    backend: str = "eager"
    progress: Progress = field(default_factory=NoProgress)
    batch: int | None = None
    groups: list[Group] = field(default_factory=list)
    results: dict[str, KernelResult] = field(default_factory=dict)
    pairs: dict[tuple[str, str], PairResult] = field(default_factory=dict)
    interrupted: bool = False
    budget_exhausted: bool = False
    elapsed_s: float = 0.0
    # figures measured while the machine was busy are always marked; stored in the table (and
    # quoted by reports) only when the user accepts them (--on-busy accept)
    store_busy: bool = False
    # read figures from the latency table only, measure nothing (plan --from-table); with
    # ``target`` ({device_name, threads} of a row the table holds), another device's figures,
    # looked up by what was measured rather than by key (keys hold their device's fingerprint)
    table_only: bool = False
    target: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.device = fingerprint(self.cfg.numerics, self.batch)
        self.runtime = backends.get(self.backend)
        self.backend_info = self.runtime.info(self.cfg.numerics)
        self._backend_id = self.runtime.key_id(self.cfg.numerics)
        self._backend_label = self.runtime.label(self.cfg.numerics)
        self.setup_s = 0.0
        self._setups = 0
        self.budget_slice_s = self.budget_s  # this backend's share when several run
        self._kernels: dict[str, Kernel] = {}
        self._group_keys: set[tuple[tuple[str, ...], bool]] = set()
        self._bench_errors: dict[int, str] = {}
        self.canaries: Canaries | None = None  # CPU runs: started with the first measurement
        self.windows: list[MachineState] = []  # one per group measured, in order
        self._snaps: list[Snapshot] = []  # the machine's counters at each window's ends
        self._stored_key: dict[str, str] = {}  # our key -> the table's (another device's)
        if self.target is not None:
            self.device = {**self.device, "name": self.target["device_name"],
                           "threads": self.target["threads"], "torch": self.target.get("torch"),
                           "onednn": None, "from_table": True}

    # -- registration -------------------------------------------------------------------------
    def key(self, k: Kernel) -> str:
        return kernel_key(k.signature, k.in_shapes, self.cfg.numerics, self.device,
                          inputs=k.example.key() if k.example is not None else None,
                          backend=self._backend_id, cold=self.cfg.cold,
                          pass_name=self.cfg.pass_name)

    def add_group(self, kernels: list[Kernel], *, paired: bool, label: str = "") -> list[str]:
        """Register kernels to time together; returns their keys (in order)."""
        keys = [self.key(k) for k in kernels]
        for k, key in zip(kernels, keys, strict=True):
            self._kernels.setdefault(key, k)
            self.results.setdefault(key, KernelResult())
        if paired and keys:
            for vk in keys[1:]:
                if vk == keys[0]:
                    self.pairs[(keys[0], vk)] = PairResult(SAME, PairedRatio(1.0, 1.0, 1.0, 0))
                else:
                    self.pairs.setdefault((keys[0], vk), PairResult())
        gk = (tuple(keys), paired)
        if gk not in self._group_keys:
            self._group_keys.add(gk)
            # unique kernels only, baseline first
            ukeys, ukern = [], []
            for k, key in zip(kernels, keys, strict=True):
                if key not in ukeys:
                    ukeys.append(key)
                    ukern.append(k)
            self.groups.append(Group(ukern, ukeys, paired and len(ukeys) > 1, label))
        return keys

    def kernel(self, key: str) -> KernelResult:
        return self.results[key]

    def pair(self, base_key: str, var_key: str) -> PairResult:
        return self.pairs.get((base_key, var_key), PairResult())

    # -- the run ------------------------------------------------------------------------------
    def _stored(self, key: str) -> dict[str, Any] | None:
        """The table's row for ``key``: by key, or (``target``) by what was measured."""
        if self.target is None:
            return self.table.get_kernel(key)
        k, n = self._kernels[key], self.cfg.numerics
        row = self.table.find_kernel({
            "signature": k.signature, "in_shapes": [list(s) for s in k.in_shapes],
            "dtype": n.dtype, "memory_format": n.memory_format, "backend": self.backend,
            "cold": self.cfg.cold, "device_name": self.target["device_name"],
            "threads": self.target["threads"]})
        if row is not None:
            self._stored_key[key] = row["key"]
        return row

    def _lookup_cache(self) -> None:
        if self.fresh:
            return
        for key, r in self.results.items():
            if r.status == PENDING:
                row = self._stored(key)
                if row is not None and row.get("median_ms") is not None:
                    r.status, r.cached_at = CACHED, row.get("measured_at")
                    r.measurement = Measurement(
                        median_ms=row["median_ms"], iqr_ms=_sub(row["q3_ms"], row["q1_ms"]),
                        q1_ms=row["q1_ms"], q3_ms=row["q3_ms"], min_ms=row["min_ms"],
                        max_ms=row["max_ms"], n=row["n"] or 0,
                        calls_per_sample=row["calls_per_sample"] or 1,
                        converged=bool(row["converged"]), graph_median_ms=row["graph_median_ms"],
                        p10_ms=row.get("p10_ms"), p90_ms=row.get("p90_ms"),
                        p99_ms=row.get("p99_ms"))
                    r.lowering = stored_lowering(row)
        for (b, v), p in self.pairs.items():
            # a stored ratio only beside the stored figures it came with: when either kernel is
            # measured again, so is the ratio (from the same interleaved rounds)
            both = self.results[b].status == CACHED and self.results[v].status == CACHED
            if p.status == PENDING and both:
                row = self.table.get_pair(self._stored_key.get(b, b), self._stored_key.get(v, v))
                if row is not None and row.get("ratio") is not None:
                    p.status, p.cached_at = CACHED, row.get("measured_at")
                    p.ratio = PairedRatio(row["ratio"], row["lo"], row["hi"], row["rounds"] or 0)

    def _todo(self, g: Group) -> list[int]:
        """Indices of the group's kernels that must be sampled (baseline included when a pair
        is missing)."""
        need = [i for i, k in enumerate(g.keys) if self.results[k].status == PENDING]
        if g.paired:
            missing = [i for i, k in enumerate(g.keys[1:], 1)
                       if self.pairs[(g.keys[0], k)].status == PENDING]
            need = sorted(set(need) | set(missing) | ({0} if missing else set()))
        return need

    def pending_count(self) -> int:
        return sum(len(self._todo(g)) for g in self.groups)

    def run(self) -> None:
        """Measure everything still pending, within the budget; never raises KeyboardInterrupt."""
        self._lookup_cache()
        if self.table_only:  # nothing is measured: what the table lacks stays absent
            self.abandon(ABSENT)
            return
        if self.cfg.training and not self.runtime.trains:
            self.abandon(UNSUPPORTED)
            return
        todo = [g for g in self.groups if self._todo(g)]
        total = sum(len(self._todo(g)) for g in todo)
        self.progress.start(total, self.budget_s)
        t0 = time.perf_counter()
        deadline = t0 + self.budget_s if self.budget_s is not None else None
        try:
            grad = torch.enable_grad() if self.cfg.training else torch.inference_mode()
            with numerics(self.cfg.numerics), grad:
                for gi, g in enumerate(todo):
                    if deadline is not None and time.perf_counter() >= deadline:
                        self.budget_exhausted = True
                        break
                    self._measure(g, todo[gi + 1:], deadline)
        except KeyboardInterrupt:
            self.interrupted = True
        self.elapsed_s = time.perf_counter() - t0
        self.abandon(INTERRUPTED if self.interrupted else BUDGET)
        if any(r.status == BUDGET for r in self.results.values()):
            self.budget_exhausted = True

    def abandon(self, status: str) -> None:
        """Mark everything still pending ``status`` without running (a run cut short)."""
        for r in self.results.values():
            if r.status == PENDING:
                r.status = status
        for p in self.pairs.values():
            if p.status == PENDING:
                p.status = status

    def _measure(self, g: Group, later: list[Group], deadline: float | None) -> None:
        idx = self._todo(g)
        sub = [g.kernels[i] for i in idx]
        keys = [g.keys[i] for i in idx]
        benches: list[Bench | None] = []
        inputs = _shared_inputs(sub, self.cfg)
        for k, key in zip(sub, keys, strict=True):
            benches.append(self._bench(k, key, inputs))
        live = [(i, b) for i, b in enumerate(benches) if b is not None]
        for i, b in enumerate(benches):
            if b is None:
                self._fail(keys[i], self._bench_errors.pop(id(sub[i]), "could not be prepared"))
        paired = g.paired and 0 in idx and benches[0] is not None

        def plan(bs: Sequence[Bench]) -> None:
            if deadline is None:
                return
            self._set_caps(bs, later, deadline)

        def done(j: int, m: Measurement) -> None:
            i = live[j][0]
            self.progress.advance(f"{g.label} {sub[i].label}"[:60])

        watch = self._watch()
        res = measure_group([b for _, b in live], paired=paired, deadline=deadline,
                            on_done=done, before_sampling=plan,
                            between_rounds=self.canaries.tick if self.canaries else None)
        state = self._watched(watch)
        if res.stopped_by_deadline:
            self.budget_exhausted = True
        stamp = now_iso()
        meas = {live[j][0]: m for j, m in enumerate(res.measurements)}
        rounds = {live[j][0]: res.rounds[j] for j in range(len(live))}
        for i, m in meas.items():
            key = keys[i]
            r = self.results[key]
            if r.status != PENDING:
                continue  # measured earlier (or cached): the first figure stands
            if m.median_ms is None:
                if m.stop == "deadline":  # prepared, but the budget ran out before a sample
                    continue  # stays pending: marked 'budget' at the end of the run
                self._fail(key, m.error or "not measured")
                continue
            r.status, r.measurement, r.error, r.machine = MEASURED, m, m.error, state
            if (m.n >= self.cfg.min_samples or m.converged) and self._storable(state):
                self.table.put_kernel(self._row(sub[i], key, m, stamp))
        if paired:
            self._store_pairs(keys, [i for i in meas if i], rounds, state, stamp,
                              res.stopped_by_deadline)

    def _store_pairs(self, keys: list[str], variants: list[int],
                     rounds: dict[int, list[float | None]], state: MachineState, stamp: str,
                     stopped: bool) -> None:
        """The paired ratio of each variant (index into ``keys``) to the baseline ``keys[0]``
        from the group's aligned rounds; stored in the table unless the machine was busy."""
        bkey = keys[0]
        for i in variants:
            p = self.pairs[(bkey, keys[i])]
            if p.status != PENDING:
                continue
            pr = paired_ratio(rounds[0], rounds[i])
            if pr is None:
                if not stopped:  # else: 'budget' at the end of the run
                    p.status = FAILED
                continue
            p.status, p.ratio, p.machine = MEASURED, pr, state
            if pr.rounds >= self.cfg.min_rounds and self._storable(state):
                self.table.put_pair(bkey, keys[i], pr.ratio, pr.lo, pr.hi, pr.rounds, stamp)

    def _storable(self, state: MachineState) -> bool:
        return self.store_busy or not state.busy

    def _watch(self) -> tuple[Snapshot, float]:
        """Start watching the machine for one group (the canaries' reference first, on the
        CPU, when this is the run's first group)."""
        if not self._snaps:
            self._snaps.append(snapshot())
        if self.canaries is None and not self.cfg.numerics.is_cuda:
            self.canaries = Canaries()
            self.canaries.start()
        start = snapshot()
        self._snaps.append(start)
        return start, time.perf_counter()

    def _load_window(self, end: Snapshot) -> Snapshot:
        """Where the load of a window ending at ``end`` is read from: its own start, or, for a
        window too short to read the load over (:data:`MIN_WINDOW_S`), the latest earlier
        snapshot far enough back, waiting out the rest when there is none (a first, short
        measurement: what competes around it is what competed with it)."""
        for snap in reversed(self._snaps):
            if end.wall - snap.wall >= MIN_WINDOW_S:
                return snap
        time.sleep(max(0.0, MIN_WINDOW_S - (end.wall - self._snaps[0].wall)))
        return self._snaps[0]

    def _watched(self, watch: tuple[Snapshot, float]) -> MachineState:
        """What competed with the group since :meth:`_watch` (busy or not)."""
        _, since = watch
        c = self.canaries
        if c is not None and time.perf_counter() - since >= INTERVAL_S / 2 and \
                c.drift(since) is None:
            c.read_now()  # a long enough window gets at least one canary reading
        moved = c.drift(since) if c is not None else None
        end = snapshot()
        start = self._load_window(end)
        if start is self._snaps[0] and end.wall - start.wall < MIN_WINDOW_S:
            end = snapshot()  # after the wait
        self._snaps.append(end)
        state = window(start, end, threads=torch.get_num_threads(),
                       canary_drift=moved[0] if moved else None,
                       canary_tolerance=moved[1] if moved else None,
                       gpu=gpu_state(self.cfg.numerics.device) if self.cfg.numerics.is_cuda else None)
        self.windows.append(state)
        return state

    def _bench(self, k: Kernel, key: str, inputs: dict[tuple[int, ...], torch.Tensor]) -> Bench | None:
        """The kernel ready to sample on this engine's backend; for a backend other than eager,
        set up (compile / export, timed apart) and its output checked against eager first."""
        from convcost.timing.harness import error_text

        stage = "preparing"
        try:
            m = prepare_module(k.module, self.cfg)
            if self.cfg.training and k.scope == "model":
                training_mode(m)
            if k.example is not None:  # any structure: tensors in, tensors out (FlatCall)
                m, xs = structured_call(m, k.example, self.cfg)
            else:
                xs = [inputs[tuple(s)] for s in k.in_shapes]
            targets = (targets_of(m, xs, input_grads=k.scope != "model")
                       if self.cfg.training else None)
            stage = "setup"
            t0 = time.perf_counter()
            prepared = self.runtime.prepare(m, xs, self.cfg.numerics)
            self.results[key].lowering = prepared.lowering
            fn = prepared.fn if targets is None else TrainStep(prepared.fn, targets)
            if self.runtime.reference:  # eager: nothing set up, nothing to check against
                return Bench(fn, self.cfg, k.expected, cuda_graph=self.runtime.cuda_graph)
            stage = "run"
            out = fn()  # training: inductor compiles the backward on this first call
            setup = time.perf_counter() - t0
            self.setup_s += setup
            self._setups += 1
            stage = "output check"
            if targets is None:
                rel = backends.check_against_eager(out, m(*xs), self.cfg.numerics.dtype)
            else:
                ref = TrainStep(lambda: m(*xs), targets)()
                rel = check_step(out, ref, fn.n_out, self.cfg.numerics.dtype)
                del ref
            del out
            r = self.results[key]
            r.setup_s = setup
            r.check = {"against": "eager", "max_rel_err": rel,
                       "tolerance": backends.tolerance(self.cfg.numerics.dtype),
                       **{k2: v for k2, v in prepared.detail.items() if isinstance(v, str)}}
            return Bench(fn, self.cfg, k.expected, cuda_graph=self.runtime.cuda_graph)
        except KeyboardInterrupt:
            raise
        except backends.OutputMismatch as e:
            text = m.name_outputs(str(e)) if hasattr(m, "name_outputs") else str(e)
            self._bench_errors[id(k)] = f"{self.backend}: {text}"
            return None
        except backends.SetupError as e:  # 'onnxruntime export failed: ...'
            self._bench_errors[id(k)] = f"{self.backend} {e.stage} failed: {error_text(e.error)}"
            return None
        except Exception as e:
            where = "" if self.runtime.reference else f"{self.backend} {stage}"
            self._bench_errors[id(k)] = f"{where} failed: {error_text(e)}" if where else error_text(e)
            return None

    def _fail(self, key: str, error: str) -> None:
        r = self.results[key]
        if r.status == PENDING:
            r.status, r.error = FAILED, error
        for (b, v), p in self.pairs.items():
            if key in (b, v) and p.status == PENDING:
                p.status = FAILED

    def _set_caps(self, benches: Sequence[Bench], later: list[Group], deadline: float) -> None:
        """Water-fill the remaining budget: this group's benches (call times known) and the
        later groups' (estimated from MACs), each weighted by its sample cost."""
        cfg = self.cfg
        rate = CUDA_MACS_PER_S if cfg.numerics.is_cuda else CPU_MACS_PER_S
        items: list[tuple[float, float, float]] = []
        reserve = 0.0
        for b in benches:  # the cap never falls below the minimum sample count
            floor = cfg.min_samples * b.sample_s * 1.05
            items.append((b.sample_s, floor, max(cfg.max_time_s, floor)))
        for g in later:
            for i in self._todo(g):
                k = g.kernels[i]
                call = CALL_OVERHEAD_S + (k.macs or 0) / rate
                sample = max(call, 0.002 if not cfg.numerics.is_cuda else call)
                floor = cfg.min_samples * sample * 1.05
                items.append((sample, floor, max(cfg.max_time_s, floor)))
                reserve += (1 + cfg.warmup_calls) * call + self._mean_setup()
        remaining = max(0.0, deadline - time.perf_counter() - reserve)
        lam = water_fill(remaining, items)
        for b, (w, floor, cap) in zip(benches, items, strict=False):
            b.cap_s = min(cap, max(floor, lam * w))

    def _mean_setup(self) -> float:
        """Seconds a kernel's setup took so far (compile / export), 0 for eager."""
        return self.setup_s / self._setups if self._setups else 0.0

    def _row(self, k: Kernel, key: str, m: Measurement, stamp: str) -> dict[str, Any]:
        fp, n = self.device, self.cfg.numerics
        return {"key": key, "label": k.label, "scope": k.scope, "signature": k.signature,
                "in_shapes": [list(s) for s in k.in_shapes], "dtype": n.dtype,
                "memory_format": n.memory_format, "backend": self.backend, "cold": self.cfg.cold,
                "device": "cuda" if n.is_cuda else "cpu", "device_name": fp.get("name"),
                "compute_capability": fp.get("compute_capability"), "driver": fp.get("driver"),
                "torch": fp.get("torch"), "cuda": fp.get("cuda"), "cudnn": fp.get("cudnn"),
                "onednn": fp.get("onednn"), "threads": fp.get("threads"), "macs": k.macs,
                "median_ms": m.median_ms, "q1_ms": m.q1_ms, "q3_ms": m.q3_ms,
                "min_ms": m.min_ms, "max_ms": m.max_ms, "n": m.n,
                "calls_per_sample": m.calls_per_sample, "converged": m.converged,
                "graph_median_ms": m.graph_median_ms, "measured_at": stamp,
                "convcost": __version__, "p10_ms": m.p10_ms, "p90_ms": m.p90_ms,
                "p99_ms": m.p99_ms, "pass": self.cfg.pass_name, "backend_id": self._backend_label,
                **lowering_fields(self.results[key].lowering)}

    # -- summary ------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def prepare_module(module: torch.nn.Module, cfg: TimingConfig) -> torch.nn.Module:
    """``module`` on the timing device, dtype and memory format, in eval mode: the module itself
    when it already is (no copy), else a converted copy (the caller's module is never changed)."""
    import copy

    n = cfg.numerics
    dev = torch.device(n.device)
    tensors = [*module.parameters(), *module.buffers()]
    if not n.channels_last and all(t.device == dev and (not t.is_floating_point()
                                                        or t.dtype == n.torch_dtype)
                                   for t in tensors):
        return _eval(module)
    m = copy.deepcopy(module).to(device=n.device, dtype=n.torch_dtype)
    if n.channels_last:
        m = m.to(memory_format=torch.channels_last)
    return _eval(m)


def _eval(m: torch.nn.Module) -> torch.nn.Module:
    try:
        return m.eval()
    except NotImplementedError:  # torch.export's modules refuse eval(); they are in eval form
        return m


def make_input(shape: tuple[int, ...] | list[int], cfg: TimingConfig) -> torch.Tensor:
    """A seeded random input on the timing device, dtype and memory format."""
    from convcost.inputs import seeded_inputs

    return _placed(seeded_inputs([shape], cfg.numerics.torch_dtype)[0], cfg)


def _placed(x: torch.Tensor, cfg: TimingConfig) -> torch.Tensor:
    """``x`` on the timing device; a 4-D floating tensor channels-last when asked."""
    n = cfg.numerics
    x = x.to(device=n.device)
    if n.channels_last and x.dim() == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def structured_call(module: torch.nn.Module, example: Any,
                    cfg: TimingConfig) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """``module`` wrapped to take the example's tensors positionally and return its output's
    tensors as a tuple (:class:`convcost.inputs.FlatCall`), and those tensors: seeded, on the
    timing device, floating ones in the timing dtype (4-D ones channels-last when asked)."""
    from convcost.inputs import FlatCall

    call = example.make(cfg.numerics.torch_dtype).map_tensors(lambda x: _placed(x, cfg))
    return FlatCall(module, call), call.tensors()


def _shared_inputs(kernels: Sequence[Kernel], cfg: TimingConfig) -> dict[tuple[int, ...], torch.Tensor]:
    """One input tensor per distinct shape, shared by the group's kernels (plain ones)."""
    out: dict[tuple[int, ...], torch.Tensor] = {}
    for k in kernels:
        if k.example is not None:
            continue
        for s in k.in_shapes:
            if tuple(s) not in out:
                out[tuple(s)] = make_input(s, cfg)
    return out

