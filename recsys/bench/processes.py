"""Process sampling for the bench: the machine and pinned stack, peak RSS of a process tree, and CPU seconds
per request charged to the process that burned them."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

STACK = ("torch", "ray", "feast", "mlflow", "onnxruntime", "faiss-cpu", "tritonclient", "transformers")


def commit() -> str:
    """The checkout's short commit, `-dirty` when the measured tree had changes; "unknown" outside a git checkout
    (a GPU machine's copy of the tree)."""
    try:
        short = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        # Results of a working tree are not that commit's; the bench's own outputs (and docs) do not count, or a
        # second suite run before the first one's results are committed would read as dirty.
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench",
                                  ":!*.md"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return (short + ("-dirty" if changed else "")) if short else "unknown"


def machine() -> dict[str, Any]:
    import psutil

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "commit": commit(),
            "stack": {p: metadata.version(p) for p in STACK}}


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, total) CPU ticks of this machine since boot from /proc/stat's `cpu` line; None where there is none
    (not Linux). Steal is the time a virtual CPU was ready to run while the hypervisor ran another guest."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:
        return None
    return fields[7], sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time the hypervisor took between two `cpu_ticks` readings. This VM's speed
    drifts 4-5x between days; a suite measured while a third of the CPUs' time was stolen says so beside its
    numbers."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


class PeakRSS:
    """Peak summed RSS of this process, its descendants and the local Ray/Triton processes (sampled at 4 Hz), and
    each process's own peak by label."""

    NAMES = ("ray::", "raylet", "gcs_server", "tritonserver", "triton_python_backend_stub", "haproxy")

    def __init__(self, own: bool = True) -> None:
        self.peak = 0
        self.own = own  # count this process itself (False: the bench's driver and load generator are not measured)
        self._peaks: dict[int, tuple[int, str]] = {}  # pid → (peak RSS, label)
        self._at_peak: dict[int, int] = {}  # pid → RSS in the sample of the summed peak
        self._sample_rss: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        procs = {p.pid: p for p in me.children(recursive=True)} | ({me.pid: me} if self.own else {})
        for p in psutil.process_iter(["name", "cmdline"]):
            text = (p.info["name"] or "") + " " + " ".join(p.info["cmdline"] or [])
            if any(n in text for n in self.NAMES) and (self.own or p.pid != me.pid):
                procs[p.pid] = p
        total = 0
        self._sample_rss = {}
        for p in procs.values():
            with contextlib.suppress(psutil.Error):
                rss = p.memory_info().rss
                total += rss
                self._sample_rss[p.pid] = rss
                if rss > self._peaks.get(p.pid, (0, ""))[0]:
                    self._peaks[p.pid] = (rss, _label(" ".join(p.cmdline()) or p.name()))
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            total = self._sample()
            if total > self.peak:
                self.peak, self._at_peak = total, self._sample_rss
            self._stop.wait(0.25)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gib(self) -> float:
        return round(self.peak / 2**30, 2)

    def by_process(self, top: int = 12) -> dict[str, float]:
        """GiB per label (peaks of processes sharing a label summed; each process at its own peak), largest first."""
        return _gib_by_label(self._peaks.values(), top)

    def at_peak(self, top: int = 12) -> dict[str, float]:
        """GiB per label in the one sample where the sum peaked: what to cut to lower `gib` (the processes' own
        peaks, `by_process`, need not coincide)."""
        return _gib_by_label(((rss, self._peaks.get(pid, (0, "other"))[1]) for pid, rss in self._at_peak.items()),
                             top)


def _gib_by_label(rows: Iterable[tuple[int, str]], top: int) -> dict[str, float]:
    """(RSS bytes, label) rows summed per label, in GiB, largest first."""
    per: dict[str, float] = {}
    for rss, label in rows:
        per[label] = per.get(label, 0.0) + rss / 2**30
    return {k: round(v, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:top]}


def _label(cmd: str) -> str:
    """A process's short name: its Ray actor name, the Triton parts, else the executable."""
    words = cmd.split()
    ray_name = next((w.removeprefix("ray::") for w in words if w.startswith("ray::")), None)
    if ray_name:  # "ServeController.listen_for_change": the actor, without the method it is running now
        return ray_name.split(".", 1)[0]
    if "python_backend_stub" in cmd:  # one stub process per model: named by its model folder (<model>/<v>/model.py)
        model = next((Path(w).parent.parent.name for w in words if w.endswith("model.py")), "")
        return f"triton python model {model}".strip()
    if "tritonserver" in cmd:
        return "tritonserver"
    return Path(words[0]).name if words else "?"


def rss_mib(labels: tuple[str, ...]) -> dict[str, float]:
    """Current RSS (MiB) by label, summed over the processes carrying each of `labels` (see `_label`)."""
    import psutil

    out = dict.fromkeys(labels, 0.0)
    for p in psutil.process_iter(["cmdline", "name"]):
        with contextlib.suppress(psutil.Error):
            label = _label(" ".join(p.info["cmdline"] or [p.info["name"] or ""]))
            if label in out:
                out[label] += p.memory_info().rss / 2**20
    return {k: round(v, 1) for k, v in out.items()}


def _process_cpu() -> dict[int, tuple[float, str]]:
    """CPU seconds so far of every process on the machine, with a short label."""
    import psutil

    out = {}
    for p in psutil.process_iter(["cmdline", "name"]):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = (t.user + t.system, _label(" ".join(p.info["cmdline"] or [p.info["name"] or ""])))
    return out


class CpuMeter:
    """The machine's CPU time charged to processes (by label) over one or more loads, and the requests they
    answered: several slices of one load (`recsys.bench.interleave`) add up to one attribution."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.requests = 0

    def measure(self, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        before = _process_cpu()
        result = run()
        after = _process_cpu()
        for pid, (cpu, label) in after.items():
            self.seconds[label] = self.seconds.get(label, 0.0) + cpu - before.get(pid, (0.0, ""))[0]
        self.requests += result["requests"]
        return result

    def per_request(self, top: int = 8) -> dict[str, float]:
        """ms of CPU per answered request, the `top` processes that burned most."""
        n = max(1, self.requests)
        ranked = sorted(self.seconds.items(), key=lambda kv: -kv[1])[:top]
        return {k: round(v / n * 1e3, 2) for k, v in ranked if v > 0}


def cpu_per_request(run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    """Run a load and attribute the machine's CPU time to processes: ms of CPU per answered request."""
    meter = CpuMeter()
    result = meter.measure(run)
    return result, meter.per_request()
