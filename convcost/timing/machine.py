"""What competed with a measurement: the machine's state over a measurement window.

Read from what the operating system exposes (Linux; elsewhere the figures are None):

- the process's own CPU time (all its threads) against the window's wall time;
- every CPU's busy time from ``/proc/stat`` (user, nice, system, irq, softirq), less our own:
  what *other* tasks used, in cores on average over the window, and the VM's steal time;
- the tasks runnable at the window's ends (``/proc/loadavg``), our involuntary context switches
  (``getrusage``), and the CPU frequency where cpufreq exposes it.

Much of a shared host is invisible from inside (a neighbour VM's memory traffic, frequency
changes), so :mod:`convcost.timing.canary` times two small fixed kernels during the run; their
drift is the third witness. A window is *busy* when other tasks held at least
:data:`BUSY_OTHERS_CORES` cores on average, steal took :data:`BUSY_STEAL_CORES`, or a canary
moved beyond its own noise; :meth:`MachineState.reasons` says which.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convcost.figures import MachineState

BUSY_OTHERS_CORES = 0.30  # other tasks' average CPU use that marks a window busy (cores)
BUSY_STEAL_CORES = 0.20  # a hypervisor's steal time that marks it busy (cores)
MIN_WINDOW_S = 0.2  # shorter windows are judged by the canaries and the run queue only
_BUSY_FIELDS = (0, 1, 2, 5, 6)  # user nice system irq softirq (iowait and idle are idle)
_STEAL_FIELD = 7
try:
    _HZ = os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):  # not POSIX
    _HZ = 100


@dataclass(frozen=True)
class Snapshot:
    """The counters at one moment (None: not exposed here)."""

    wall: float
    own_cpu_s: float
    nivcsw: int
    busy_ticks: int | None
    steal_ticks: int | None
    runnable: int | None


def _proc_stat() -> tuple[int | None, int | None]:
    """(busy ticks, steal ticks) summed over every CPU, from /proc/stat's first line."""
    try:
        with open("/proc/stat", "rb") as f:
            first = f.readline().split()
        vals = [int(x) for x in first[1:]]
        return sum(vals[i] for i in _BUSY_FIELDS if i < len(vals)), (
            vals[_STEAL_FIELD] if len(vals) > _STEAL_FIELD else 0)
    except (OSError, ValueError, IndexError):
        return None, None


def runnable_tasks() -> int | None:
    """Tasks runnable now, machine-wide (ours included), from /proc/loadavg."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def snapshot() -> Snapshot:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    busy, steal = _proc_stat()
    return Snapshot(time.perf_counter(), ru.ru_utime + ru.ru_stime, ru.ru_nivcsw, busy, steal,
                    runnable_tasks())


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_freq_mhz() -> float | None:
    """Mean current frequency of the usable CPUs where cpufreq exposes it, else None."""
    vals = []
    for p in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            vals.append(int(p.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return round(sum(vals) / len(vals), 1) if vals else None


def window(a: Snapshot, b: Snapshot, *, threads: int | None, canary_drift: float | None = None,
           canary_tolerance: float | None = None,
           gpu: dict[str, Any] | None = None) -> MachineState:
    """The state between two snapshots, judged busy or not (see the module docstring). With
    ``gpu`` (a CUDA run: :func:`gpu_state`), the CPU's load is recorded but the verdict is the
    GPU's: other processes on it."""
    wall = max(b.wall - a.wall, 1e-9)
    own = max(0.0, b.own_cpu_s - a.own_cpu_s)
    others = steal = None
    if a.busy_ticks is not None and b.busy_ticks is not None:
        others = max(0.0, (b.busy_ticks - a.busy_ticks) / _HZ - own) / wall
    if a.steal_ticks is not None and b.steal_ticks is not None:
        steal = max(0, b.steal_ticks - a.steal_ticks) / _HZ / wall
    runq = [x for x in (a.runnable, b.runnable) if x is not None]
    # /proc/loadavg counts the reader; our sampling threads were running too
    runnable_others = max(0, min(runq) - 1 - max(0, (threads or 1) - 1)) if runq else None
    why: list[tuple[str, str]] = []  # (cause, text); causes: others, steal, canary, gpu
    if gpu is not None:
        if gpu.get("other_processes"):
            why.append(("gpu", f"{gpu['other_processes']} other process(es) on the GPU"))
    elif wall >= MIN_WINDOW_S and others is not None and others >= BUSY_OTHERS_CORES:
        why.append(("others", f"other tasks used {others:.1f} core(s)"))
    if wall >= MIN_WINDOW_S and steal is not None and steal >= BUSY_STEAL_CORES:
        why.append(("steal", f"the hypervisor took {steal:.1f} core(s) (steal)"))
    if canary_drift is not None and canary_tolerance is not None and \
            abs(canary_drift) > canary_tolerance:
        why.append(("canary", f"a canary kernel moved {canary_drift:+.0%} (its noise: "
                              f"±{canary_tolerance:.0%})"))
    return MachineState(wall, usable_cpus(), threads, own / wall, others, steal,
                        max(0, b.nivcsw - a.nivcsw), runnable_others, cpu_freq_mhz(),
                        canary_drift, canary_tolerance, tuple(t for _, t in why), gpu,
                        tuple(c for c, _ in why))


def gpu_state(device: str) -> dict[str, Any] | None:
    """Other processes on the timing GPU, its SM clock and throttle reasons, through NVML
    (``pynvml``, from the nvidia-ml-py package) where it is installed; None elsewhere."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        import torch

        pynvml.nvmlInit()
        index = torch.device(device).index or 0
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        others = sum(1 for p in procs if p.pid != os.getpid())
        return {"other_processes": others,
                "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "throttle_reasons": int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h))}
    except Exception:  # no NVML driver, a MIG slice, a container without /dev/nvidiactl
        return None


def load_over(sample_s: float) -> MachineState:
    """The machine's state over the next ``sample_s`` seconds while we sleep: what other tasks
    use (``--threads auto`` and ``convcost doctor`` read it)."""
    a = snapshot()
    time.sleep(sample_s)
    return window(a, snapshot(), threads=1)


def idle_cores(sample_s: float = 0.2) -> tuple[int, float | None]:
    """(usable CPUs, the cores other tasks kept busy over ``sample_s``): what
    ``--threads auto`` reads before a run. The figure is None where /proc/stat is missing."""
    st = load_over(sample_s)
    return st.cpus, st.others_cores


def auto_threads(default: int, sample_s: float = 0.2) -> tuple[int, str]:
    """The thread count for ``--threads auto``: torch's default (``default``), less the cores
    other tasks are using now (rounded), at least 1; and a sentence saying so."""
    cpus, others = idle_cores(sample_s)
    if others is None:
        return default, f"{default} (torch's default; the machine's load is not readable here)"
    taken = min(cpus, int(others + 0.5))
    n = max(1, min(default, cpus - taken))
    if taken:
        return n, (f"{n} (auto: other tasks were using about {others:.1f} of {cpus} cores at the "
                   "start)")
    return n, f"{n} (auto: {cpus} cores idle at the start)"


# --------------------------------------------------------------------------- doctor


@dataclass(frozen=True)
class Finding:
    """One thing ``convcost doctor`` looked at: what it saw, whether it is ``ok``, ``warn``
    (it will move or bias the figures) or ``info`` (not readable here), and what to change."""

    name: str
    state: str
    status: str
    advice: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "state": self.state, "status": self.status,
                "advice": self.advice}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _load_finding(sample_s: float) -> list[Finding]:
    st = load_over(sample_s)
    out = []
    if st.others_cores is None:
        out.append(Finding("load", "not readable (no /proc/stat)", "info"))
    else:
        busy = st.others_cores >= BUSY_OTHERS_CORES
        out.append(Finding("load", f"other tasks use {st.others_cores:.1f} of {st.cpus} cores "
                           f"(over {sample_s:g} s)", "warn" if busy else "ok",
                           "stop them, or time elsewhere: figures taken now are marked busy and "
                           "withheld from headlines" if busy else ""))
    if st.steal_cores is not None:
        stolen = st.steal_cores >= BUSY_STEAL_CORES
        out.append(Finding("steal", f"{st.steal_cores:.2f} cores taken by the hypervisor",
                           "warn" if stolen else "ok",
                           "a shared VM: its neighbours take CPU time; use a dedicated host for "
                           "figures you publish" if stolen else ""))
    return out


def _cpufreq_findings() -> list[Finding]:
    govs = {g for p in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor")
            if (g := _read(str(p)))}
    out = []
    if not govs:
        out.append(Finding("frequency governor", "not exposed (a VM, or no cpufreq)", "info",
                           "the host decides the clock: figures can move with it; the canaries "
                           "watch for that during a run"))
    else:
        ok = govs == {"performance"}
        out.append(Finding("frequency governor", ", ".join(sorted(govs)), "ok" if ok else "warn",
                           "" if ok else "cpupower frequency-set -g performance (the clock then "
                           "stays up between kernels)"))
    no_turbo = _read("/sys/devices/system/cpu/intel_pstate/no_turbo")
    boost = _read("/sys/devices/system/cpu/cpufreq/boost")
    if no_turbo is not None or boost is not None:
        on = no_turbo == "0" or boost == "1"
        out.append(Finding("turbo / boost", "on" if on else "off", "warn" if on else "ok",
                           "turbo clocks depend on temperature and on what else runs: turn it "
                           "off for repeatable figures (intel_pstate/no_turbo = 1, or "
                           "cpufreq/boost = 0)" if on else ""))
    else:
        out.append(Finding("turbo / boost", "not exposed", "info"))
    return out


def _cpu_findings(torch_threads: int) -> list[Finding]:
    out = []
    smt = _read("/sys/devices/system/cpu/smt/active")
    if smt is not None:
        on = smt == "1"
        out.append(Finding("SMT (hyper-threading)", "on" if on else "off", "warn" if on else "ok",
                           "sibling threads share one core's units: use --threads up to the "
                           "physical cores, or pin with taskset" if on else ""))
    iso = _read("/sys/devices/system/cpu/isolated")
    out.append(Finding("isolated CPUs", iso or "none", "ok" if iso else "info",
                       "" if iso else "for the steadiest figures, isolate CPUs (isolcpus=) and "
                       "run convcost on them with taskset"))
    cpus = usable_cpus()
    over = torch_threads > cpus
    out.append(Finding("threads", f"torch uses {torch_threads} of {cpus} usable CPUs",
                       "warn" if over else "ok",
                       f"--threads {cpus} (more threads than CPUs wait for each other)" if over
                       else ""))
    return out


def _gpu_findings() -> list[Finding]:
    import torch

    if not torch.cuda.is_available():
        return [Finding("GPU", "no CUDA device", "info")]
    out = []
    for i in range(torch.cuda.device_count()):
        st = gpu_state(f"cuda:{i}")
        name = torch.cuda.get_device_name(i)
        if st is None:
            out.append(Finding(f"GPU {i}", f"{name}; NVML not available", "info",
                               "pip install nvidia-ml-py to see other processes, clocks and "
                               "throttling"))
            continue
        busy = st["other_processes"] > 0 or st["throttle_reasons"] & ~0x1
        out.append(Finding(f"GPU {i}", f"{name}: {st['other_processes']} other process(es), SM "
                           f"{st['sm_clock_mhz']} MHz, throttle reasons {st['throttle_reasons']:#x}",
                           "warn" if busy else "ok",
                           "other processes or throttling move GPU figures: stop them, or lock "
                           "clocks (nvidia-smi -lgc)" if busy else ""))
    return out


def survey(torch_threads: int, sample_s: float = 0.5) -> list[Finding]:
    """A quick look at the machine before timing (what pyperf's ``system show`` looks at):
    load and steal, frequency governor and turbo, SMT, isolated CPUs, threads, GPUs."""
    return [*_load_finding(sample_s), *_cpufreq_findings(), *_cpu_findings(torch_threads),
            *_gpu_findings()]
