"""What machine the run is on, and what processes cost: CPU time and memory read from /proc."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def describe(postgres_version: str) -> dict[str, object]:
    """Cores, memory, CPU model, kernel, PostgreSQL and Python versions, and the date."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "memory_gib": round(_mem_total_kib() / 1024 / 1024, 1),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "postgres": postgres_version,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "executable": sys.executable,
    }


def _mem_total_kib() -> int:
    for line in (PROC / "meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def _cpu_model() -> str:
    try:
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def raise_nofile_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, wanted)
    if hard != resource.RLIM_INFINITY and target > hard:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            target = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def raise_priority(steps: int) -> int:
    """Lower this process's niceness by ``steps`` if allowed (root): the harness's timers then
    fire on time under load, and the processes it starts, which inherit it, are disturbed less
    by other work on a shared machine. Returns the niceness in force."""
    try:
        return os.nice(-steps)
    except OSError:
        return os.nice(0)


# Per-process figures


def rss_kib(pid: int) -> int | None:
    """Resident set size (VmRSS) of one process in KiB, or None when it is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(root: int) -> list[int]:
    """``root`` and all its descendants, found through the parent ids in /proc."""
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


@dataclass(frozen=True, slots=True)
class _Proc:
    ppid: int
    cpu: float  # own user + system seconds
    reaped: float  # user + system seconds of its exited, waited-for children


def _scan() -> dict[int, _Proc]:
    """One pass over /proc: every process's parent and CPU times (one file read each)."""
    out: dict[int, _Proc] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = _Proc(
            ppid=int(fields[1]),
            cpu=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            reaped=(int(fields[13]) + int(fields[14])) / CLOCK_TICKS,
        )
    return out


def _tree(procs: dict[int, _Proc], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            found.add(pid)
        todo.extend(children.get(pid, []))
    return found


@dataclass
class CpuMeter:
    """CPU spent by named process trees between ``start`` and ``stop``, in cores.

    Each end is one quick pass over /proc, timed at its middle. Processes that appear in between
    count from zero; children that exit in between are found in their parent's reaped-children
    time (PostgreSQL's autovacuum workers, say). Besides the named trees: the whole machine, the
    kernel's interrupt work and the time the hypervisor took (``irq``, ``steal``; not part of
    any process), and the busiest processes outside the named trees (``others``: another
    session's test suite, say).
    """

    roots: dict[str, int]
    _before: dict[int, _Proc] = field(default_factory=dict)
    _system_before: list[float] = field(default_factory=list)
    _wall_before: float = 0.0

    def start(self) -> None:
        self._before, self._wall_before, self._system_before = _snapshot()

    def stop(self) -> dict[str, Any]:
        after, wall_after, system_after = _snapshot()
        wall = max(1e-9, wall_after - self._wall_before)
        result: dict[str, Any] = {}
        named: set[int] = set()
        for name, root in self.roots.items():
            now_tree = _tree(after, root)
            then_tree = _tree(self._before, root)
            named |= now_tree
            spent = sum(
                after[pid].cpu - (self._before[pid].cpu if pid in self._before else 0.0)
                for pid in now_tree
            )
            if root in after and root in self._before:
                gone = then_tree - now_tree
                reaped = after[root].reaped - self._before[root].reaped
                spent += max(0.0, reaped - sum(self._before[pid].cpu for pid in gone))
            result[name] = round(spent / wall, 3)
        delta = [a - b for a, b in zip(system_after, self._system_before, strict=False)]
        total = sum(delta[:8]) or 1.0
        cores = os.cpu_count() or 1
        idle = delta[3] + delta[4]
        result["machine"] = round((total - idle) / total * cores, 3)
        result["irq"] = round((delta[5] + delta[6]) / total * cores, 3)
        result["steal"] = round(delta[7] / total * cores, 3)
        others = []
        for pid, proc in after.items():
            if pid in named or pid == os.getpid():
                continue
            spent = proc.cpu - (self._before[pid].cpu if pid in self._before else 0.0)
            if spent / wall >= 0.02:
                others.append((spent / wall, _command(pid)))
        others.sort(reverse=True)
        result["others"] = {f"{cmd} ({i})": round(c, 3) for i, (c, cmd) in enumerate(others[:4])}
        return result


def _snapshot() -> tuple[dict[int, _Proc], float, list[float]]:
    t0 = time.monotonic()
    procs = _scan()
    t1 = time.monotonic()
    return procs, (t0 + t1) / 2, _system_fields()


def _command(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def _system_fields() -> list[float]:
    """The jiffies of the first line of /proc/stat: user nice system idle iowait irq softirq
    steal (guest times are already in user)."""
    values = [float(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    return (values + [0.0] * 8)[:8]


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from the first line of /proc/stat."""
    values = [float(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    total = sum(values[:8])
    return total - idle, total
