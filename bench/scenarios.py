"""The scenarios, run in order against one fresh embedded PostgreSQL:

1. throughput, spread: generations/s over many projects at rising concurrency;
2. throughput, contended: the same with every client on one project;
3. the ceiling: pgbench on the same SQL at the same client counts, interleaved with 1 and 2;
4. time to first event at half of the peak rate of 1, open-loop;
5. open streams: many listeners on slow generations in one worker (memory, idle CPU);
6. history: a page at the end of a project of a million messages;
7. resume on another worker with Last-Event-ID;
8. the seed app's MAX(sequence)+1 method at the same concurrency, beside ours.

Every step is bounded in time; every server and client process is stopped by the step that
started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import database, pgbench
from bench import profile as profiler
from bench.database import Cluster, project_id
from bench.machine import CpuMeter, rss_kib
from bench.plan import Plan
from bench.server import REPO_ROOT, ServerProcess
from bench.source import Source
from bench.waits import WaitSampler
from bench.wire import Connection, request_bytes

logger = logging.getLogger("bench")

# Project (and user) numbers of the single-project scenarios, above any spread project.
HOT = 1_000_001
HISTORY = 1_000_002
STREAMS = 1_000_003
RESUME = 1_000_004
SPECIAL = (HOT, HISTORY, STREAMS, RESUME)

Phase = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Bench:
    plan: Plan
    workdir: Path
    results_dir: Path
    stamp: str
    cluster: Cluster
    profile: bool
    source: Source
    service_url: str = ""
    pgbench_url: str = ""
    tokens: dict[int, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, dict[str, str]] = field(default_factory=dict)

    # Setup

    async def prepare(self) -> None:
        spread = range(1, self.plan.spread_projects + 1)
        self.service_url = await self.cluster.create("orderly", self.source.root)
        self.pgbench_url = await self.cluster.create("pgbench", self.source.root)
        self.tokens = await database.seed(self.service_url, [*spread, *SPECIAL])
        await database.seed(self.pgbench_url, [*spread, HOT])

    def targets(self, numbers: range | list[int]) -> list[list[str]]:
        return [[str(project_id(n)), self.tokens[n]] for n in numbers]

    @contextlib.asynccontextmanager
    async def server(self, name: str, settings: dict[str, str]) -> AsyncIterator[ServerProcess]:
        proc = ServerProcess(name, self.service_url, self.workdir, settings, cwd=self.source.root)
        self.servers[name] = proc.setting_env
        await asyncio.to_thread(proc.start)
        try:
            yield proc
        finally:
            await asyncio.to_thread(proc.stop)

    # Running the load client

    async def client(
        self,
        spec: dict[str, Any],
        *,
        meter: dict[str, int] | None = None,
        workers: list[int] | None = None,
        on_phase: Phase | None = None,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Run ``python -m bench.load`` with ``spec``; measure CPU between its measure markers
        (of the ``meter`` process trees, and of each of the server's ``workers`` apart, with
        the client connections each worker holds at the end: keep-alive connections stay
        with the worker that accepted them)."""
        log = (self.workdir / "client.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.load",
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
        cpu_meter = CpuMeter({**meter, "client": proc.pid}) if meter is not None else None
        per_worker = {f"worker {i + 1}": pid for i, pid in enumerate(workers or [])}
        worker_meter = CpuMeter(per_worker) if len(per_worker) > 1 else None
        result: dict[str, Any] | None = None
        cpu: dict[str, Any] | None = None
        split: dict[str, Any] | None = None

        async def read() -> None:
            nonlocal result, cpu, split
            assert proc.stdout is not None
            async for line in proc.stdout:
                record = json.loads(line)
                phase = record["phase"]
                if phase == "measure_start":
                    if cpu_meter is not None:
                        cpu_meter.start()
                    if worker_meter is not None:
                        worker_meter.start()
                elif phase == "measure_end":
                    if cpu_meter is not None:
                        cpu = with_other(cpu_meter.stop())
                    if worker_meter is not None:
                        cores = worker_meter.stop()
                        split = {
                            name: {"cores": cores[name], "sockets": count_sockets(pid)}
                            for name, pid in per_worker.items()
                        }
                elif phase == "result":
                    result = record
                if on_phase is not None:
                    await on_phase(record)

        try:
            await asyncio.wait_for(read(), timeout)
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"load client timed out after {timeout}s: {spec['mode']}") from None
        finally:
            log.close()
        if result is None:
            raise RuntimeError(f"load client failed ({proc.returncode}); see client.log")
        result.pop("phase", None)
        if cpu is not None:
            result["cpu_cores"] = cpu
        if split is not None:
            result["workers"] = split
        return result

    # 1, 2, 3: throughput and the ceiling

    async def closed_step(
        self, server: ServerProcess, targets: list[list[str]], clients: int
    ) -> dict[str, Any]:
        plan = self.plan
        spec = {
            "mode": "closed",
            "port": server.port,
            "targets": targets,
            "concurrency": clients,
            "warmup": plan.warmup_s,
            "duration": plan.measure_s,
            "max_requests": plan.max_requests_per_step,
            "seed": clients,
        }
        meter = {"server": server.pid, "postgres": self.cluster.postmaster_pid}
        budget = plan.warmup_s + plan.measure_s + 60
        workers = server.worker_pids()
        result = await self.client(spec, meter=meter, workers=workers, timeout=budget)
        result["cpu_ms_per_generation"] = per_generation(result.get("cpu_cores"), result["rate"])
        return result

    async def pgbench_step(self, script: Path, clients: int, lo: int, hi: int) -> dict[str, Any]:
        seconds = self.plan.measure_s
        cpu: dict[str, Any] = {}
        tasks: list[asyncio.Task[None]] = []

        async def measure(pid: int) -> None:
            meter = CpuMeter({"pgbench": pid, "postgres": self.cluster.postmaster_pid})
            await asyncio.sleep(0.5)
            meter.start()
            await asyncio.sleep(max(0.5, seconds - 1.0))
            cpu.update(with_other(meter.stop()))

        def on_start(pid: int) -> None:
            tasks.append(asyncio.create_task(measure(pid)))

        run = await pgbench.run_pgbench(
            self.cluster.bin_dir,
            self.pgbench_url,
            script,
            clients=clients,
            seconds=seconds,
            variables={"lo": lo, "hi": hi},
            on_start=on_start,
        )
        for task in tasks:
            with contextlib.suppress(Exception):
                await task
        result = {**run.as_dict(), "cpu_cores": cpu}
        result["cpu_ms_per_generation"] = per_generation(cpu, result["rate"])
        return result

    async def throughput(self) -> None:
        plan = self.plan
        spread = self.targets(range(1, plan.spread_projects + 1))
        hot = self.targets([HOT])
        script_text, script_info = pgbench.generation_script(self.source.queries)
        script = self.workdir / "generation.pgbench.sql"
        script.write_text(script_text)
        (self.results_dir / f"{self.stamp}-generation.pgbench.sql").write_text(script_text)
        steps: dict[str, list[dict[str, Any]]] = {
            "service_spread": [],
            "pgbench_spread": [],
            "service_contended": [],
            "pgbench_contended": [],
        }
        settings = throughput_settings(plan)
        async with self.server("throughput", settings) as server:
            self.results["server_workers"] = server.worker_pids()
            for clients in plan.concurrencies:
                logger.info("throughput: %d clients", clients)
                steps["service_spread"].append(await self.closed_step(server, spread, clients))
                steps["pgbench_spread"].append(
                    await self.pgbench_step(script, clients, 1, plan.spread_projects)
                )
                steps["service_contended"].append(await self.closed_step(server, hot, clients))
                steps["pgbench_contended"].append(
                    await self.pgbench_step(script, clients, HOT, HOT)
                )
                log_step(steps, clients)
            self.results["throughput"] = {"steps": steps, "pgbench_script": script_info}
            self.results["ratios"] = ratios(steps)
            self.results["sequence_check"] = {
                "service_contended": await database.check_sequences(self.service_url, [HOT]),
                "service_spread": await database.check_sequences(
                    self.service_url, range(1, plan.spread_projects + 1)
                ),
                "pgbench": await database.check_sequences(
                    self.pgbench_url, [*range(1, plan.spread_projects + 1), HOT]
                ),
            }
            await self.first_event(server, spread)
            if self.profile and plan.profile_s > 0:
                await self.profile_throughput(server, spread)
            await self.history(server)

    # 4: time to first event at half the peak rate

    async def first_event(self, server: ServerProcess, targets: list[list[str]]) -> None:
        peak = max(s["rate"] for s in self.results["throughput"]["steps"]["service_spread"])
        rate = max(1.0, peak / 2)
        logger.info("first event: open loop at %.0f generations/s", rate)
        spec = {
            "mode": "open",
            "port": server.port,
            "targets": targets,
            "rate": rate,
            "warmup": 1.0,
            "duration": self.plan.first_event_s,
            "max_connections": 2000,
        }
        meter = {"server": server.pid, "postgres": self.cluster.postmaster_pid}
        # What the database's backends do meanwhile: a tail is then put on a lock, an I/O or a
        # background process (bench/waits.py).
        sampler = WaitSampler(self.cluster.admin_url, "orderly", self.source.queries)
        waits: dict[str, Any] = {}

        async def on_phase(record: dict[str, Any]) -> None:
            if record["phase"] == "measure_start":
                await sampler.start()
            elif record["phase"] == "measure_end":
                waits.update(await sampler.stop())

        try:
            result = await self.client(
                spec,
                meter=meter,
                workers=server.worker_pids(),
                on_phase=on_phase,
                timeout=self.plan.first_event_s + 90,
            )
        finally:
            if not waits:
                await sampler.stop()
        result["peak_rate"] = peak
        result["postgres_waits"] = waits
        self.results["first_event"] = result

    async def profile_throughput(self, server: ServerProcess, targets: list[list[str]]) -> None:
        steps = self.results["throughput"]["steps"]["service_spread"]
        clients = max(steps, key=lambda s: s["rate"])["concurrency"]
        output = self.results_dir / f"{self.stamp}-profile-throughput.txt"
        spec = {
            "mode": "closed",
            "port": server.port,
            "targets": targets,
            "concurrency": clients,
            "warmup": 1.0,
            "duration": self.plan.profile_s + 2.0,
            "max_requests": self.plan.max_requests_per_step,
        }
        logger.info("profiling the server at %d clients", clients)
        result = await self.profiled(server.pid, spec, output, "throughput (spread)")
        self.profiles["throughput"]["load"] = {
            "clients": clients,
            "rate_under_profiler": result["rate"],
        }

    async def profiled(
        self, pid: int, spec: dict[str, Any], output: Path, what: str
    ) -> dict[str, Any]:
        """Run the client with ``spec`` and py-spy on ``pid`` while it measures."""
        name = output.stem.rsplit("-profile-", 1)[-1]
        recording: list[asyncio.Task[str | None]] = []

        async def on_phase(record: dict[str, Any]) -> None:
            if record["phase"] == "measure_start":
                coro = profiler.record(pid, self.plan.profile_s, output)
                recording.append(asyncio.create_task(coro))

        result = await self.client(spec, on_phase=on_phase, timeout=self.plan.profile_s + 120)
        error = await recording[0] if recording else "the load never started"
        entry: dict[str, Any] = {"what": what, "seconds": self.plan.profile_s}
        if error is None:
            entry.update(profiler.summarize(await asyncio.to_thread(output.read_text)))
            entry["file"] = (await asyncio.to_thread(profiler.compress, output)).name
        else:
            entry["error"] = error
            logger.warning("profile %s: %s", name, error)
        self.profiles[name] = entry
        return result

    # 6: history at the end of a long project

    async def history(self, server: ServerProcess) -> None:
        plan = self.plan
        logger.info("history: loading %d messages", plan.history_messages)
        load_seconds = await database.load_history(self.service_url, HISTORY, plan.history_messages)
        project = project_id(HISTORY)
        spec = {
            "mode": "history",
            "port": server.port,
            "path": f"/api/projects/{project}/messages?limit=50",
            "token": self.tokens[HISTORY],
            "requests": plan.history_requests,
            "max_seconds": 30.0,
        }
        result = await self.client(spec, timeout=90)
        result["messages_in_project"] = plan.history_messages
        result["load_seconds"] = round(load_seconds, 1)
        self.results["history"] = result
        p50 = result["latency"]["p50_ms"]
        missed = p50 is not None and p50 >= TARGETS_MS["history"]
        if self.profile and plan.profile_s > 0 and missed:
            output = self.results_dir / f"{self.stamp}-profile-history.txt"
            longer = {**spec, "requests": 1_000_000, "max_seconds": plan.profile_s + 2}
            recording = asyncio.create_task(profiler.record(server.pid, plan.profile_s, output))
            await self.client(longer, timeout=plan.profile_s + 90)
            error = await recording
            entry: dict[str, Any] = {"what": "history", "seconds": plan.profile_s}
            if error is None:
                entry.update(profiler.summarize(await asyncio.to_thread(output.read_text)))
                entry["file"] = (await asyncio.to_thread(profiler.compress, output)).name
            else:
                entry["error"] = error
            self.profiles["history"] = entry

    # 7: resume on another worker

    async def resume(self) -> None:
        plan = self.plan
        settings = {"WORKERS": "1", "DEMO_DELTA_MS": "50", "DEMO_DELTAS": "8"}
        async with self.server("resume-a", settings) as a, self.server("resume-b", settings) as b:
            spec = {
                "mode": "resume",
                "port_a": a.port,
                "port_b": b.port,
                "token": self.tokens[RESUME],
                "project": str(project_id(RESUME)),
                "samples": plan.resume_samples,
                "concurrency": 8,
                "cut_after": 4,
                "gap": 0.15,
                "max_seconds": 60.0,
            }
            logger.info("resume: %d samples", plan.resume_samples)
            self.results["resume"] = await self.client(spec, timeout=120)
            p50 = self.results["resume"]["other_worker"]["p50_ms"]
            if (
                self.profile
                and plan.profile_s > 0
                and p50 is not None
                and p50 >= TARGETS_MS["resume"]
            ):
                output = self.results_dir / f"{self.stamp}-profile-resume.txt"
                long_spec = {**spec, "samples": 100_000, "max_seconds": plan.profile_s + 1}
                await self.profiled(b.pid, long_spec, output, "resume (the other worker)")

    # 5: open streams

    async def open_streams(self) -> None:
        plan = self.plan
        settings = {
            "WORKERS": "1",
            "DEMO_DELTA_MS": "600000",  # the first delta is due in 10 minutes: idle until then
            "DEMO_DELTAS": "8",
            "PING_SECONDS": str(plan.ping_seconds),
            "SHUTDOWN_GRACE_SECONDS": "1",
            "SEND_TIMEOUT_SECONDS": "60",
        }
        token = self.tokens[STREAMS]
        project = project_id(STREAMS)
        async with self.server("streams", settings) as server:
            paths = []
            for i in range(plan.stream_generations):
                status, body = await post_json(
                    server.port,
                    f"/api/projects/{project}/generations",
                    token,
                    {"message": f"A slow answer, please ({i})"},
                )
                if status != 202:
                    raise RuntimeError(f"starting a slow generation answered {status}: {body}")
                paths += [body["events_url"]] * plan.listeners_per_generation
            await asyncio.sleep(0.5)  # let the first flush write their progress events
            figures: dict[str, Any] = {"rss_before_kib": rss_kib(server.pid)}
            meter = CpuMeter({"server": server.pid, "postgres": self.cluster.postmaster_pid})
            linger = plan.profile_s + 1.0 if self.profile and plan.profile_s > 0 else 0.0
            profile_output = self.results_dir / f"{self.stamp}-profile-streams-idle.txt"
            recording: list[asyncio.Task[str | None]] = []

            async def on_phase(record: dict[str, Any]) -> None:
                phase = record["phase"]
                if phase == "connected":
                    figures["rss_connected_kib"] = rss_kib(server.pid)
                    figures["server_fds"] = count_fds(server.pid)
                elif phase == "idle_start":
                    figures["rss_after_kib"] = rss_kib(server.pid)
                    meter.start()
                elif phase == "idle_end":
                    figures["idle_cpu_cores"] = with_other(meter.stop())
                    if linger:  # profile the idle streams after (not during) the measurement
                        coro = profiler.record(server.pid, plan.profile_s, profile_output)
                        recording.append(asyncio.create_task(coro))

            spec = {
                "mode": "listeners",
                "port": server.port,
                "paths": [[p, token] for p in paths],
                "batch": 250,
                "settle": 2.0,
                "idle": plan.idle_s,
                "linger": linger,
            }
            logger.info("open streams: %d listeners", len(paths))
            result = await self.client(spec, on_phase=on_phase, timeout=plan.idle_s + linger + 240)
            if recording:
                error = await recording[0]
                entry: dict[str, Any] = {
                    "what": f"{result['attached']:,} open streams, idle but for pings",
                    "seconds": plan.profile_s,
                }
                if error is None:
                    text = await asyncio.to_thread(profile_output.read_text)
                    entry.update(profiler.summarize(text))
                    packed = await asyncio.to_thread(profiler.compress, profile_output)
                    entry["file"] = packed.name
                else:
                    entry["error"] = error
                self.profiles["streams_idle"] = entry
            before = figures.get("rss_before_kib") or 0
            after = figures.get("rss_after_kib") or 0
            attached = max(1, result["attached"])
            result.update(figures)
            result["server_settings"] = settings
            result["bytes_per_stream"] = round((after - before) * 1024 / attached)
            idle = figures.get("idle_cpu_cores", {})
            result["server_idle_cpu_cores"] = idle.get("server")
            self.results["open_streams"] = result

    # 8: the seed app's method

    async def seed_method(self) -> None:
        runs = []
        for clients in self.plan.concurrencies:
            runs.append(
                await pgbench.seed_method(
                    self.pgbench_url,
                    clients=clients,
                    seconds=self.plan.seed_method_s,
                    unique=True,
                    project=clients,
                )
            )
        silent = await pgbench.seed_method(
            self.pgbench_url,
            clients=self.plan.concurrencies[0],
            seconds=self.plan.seed_method_s,
            unique=False,
            project=1,
        )
        contended = self.results.get("sequence_check", {}).get("service_contended", {})
        self.results["seed_method"] = {
            "with_unique_constraint": runs,
            "without_constraint": silent,
            "ours_contended": contended,
        }


def throughput_settings(plan: Plan) -> dict[str, str]:
    return {
        "WORKERS": str(plan.workers),
        "DEMO_DELTA_MS": "0",
        "DEMO_DELTAS": "8",
        "POOL_MAX_SIZE": "10",
    }


TARGETS_MS = {"first_event_p99": 25.0, "history": 3.0, "resume": 20.0}


def with_other(cpu: dict[str, Any]) -> dict[str, Any]:
    """Add ``other``: the machine's busy cores not explained by the measured processes, the
    kernel's interrupt work or the hypervisor."""
    named = sum(v for k, v in cpu.items() if k not in ("machine", "others"))
    return {**cpu, "other": round(max(0.0, cpu.get("machine", 0.0) - named), 3)}


def per_generation(cpu: dict[str, Any] | None, rate: float) -> dict[str, float]:
    """CPU milliseconds per generation of each benchmark process: far less sensitive to the
    machine's other load than the rates themselves."""
    if not cpu or not rate:
        return {}
    names = ("server", "pgbench", "postgres", "client")
    return {k: round(cpu[k] * 1000 / rate, 3) for k in names if k in cpu}


def ratios(steps: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def pairs(kind: str) -> list[dict[str, Any]]:
        out = []
        for svc, pg in zip(steps[f"service_{kind}"], steps[f"pgbench_{kind}"], strict=True):
            ratio = svc["rate"] / pg["rate"] if pg["rate"] else None
            out.append(
                {
                    "clients": svc["concurrency"],
                    "service": svc["rate"],
                    "pgbench": pg["rate"],
                    "ratio": None if ratio is None else round(ratio, 3),
                }
            )
        return out

    result: dict[str, Any] = {}
    for kind in ("spread", "contended"):
        rows = pairs(kind)
        best_service = max(r["service"] for r in rows)
        best_pgbench = max(r["pgbench"] for r in rows)
        result[kind] = {
            "by_clients": rows,
            "service_peak": best_service,
            "pgbench_peak": best_pgbench,
            "peak_ratio": round(best_service / best_pgbench, 3) if best_pgbench else None,
        }
    return result


def log_step(steps: dict[str, list[dict[str, Any]]], clients: int) -> None:
    logger.info(
        "  %d clients: spread %.0f/s (pgbench %.0f/s), contended %.0f/s (pgbench %.0f/s)",
        clients,
        steps["service_spread"][-1]["rate"],
        steps["pgbench_spread"][-1]["rate"],
        steps["service_contended"][-1]["rate"],
        steps["pgbench_contended"][-1]["rate"],
    )


def count_sockets(pid: int) -> int | None:
    """Open sockets of a process (its client connections, its pool, its listener)."""
    try:
        links = [os.readlink(p) for p in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return None
    return sum(1 for link in links if link.startswith("socket:"))


def count_fds(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


async def post_json(
    port: int, path: str, token: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """One JSON request (``Accept: application/json``) on a fresh connection."""
    conn = await Connection.open(port)
    try:
        raw = request_bytes(
            "POST",
            path,
            port,
            token=token,
            body=json.dumps(body).encode(),
            headers={"Accept": "application/json"},
        )
        ex = await asyncio.wait_for(conn.request(raw, keep_body=True), 30)
    finally:
        conn.close()
    return ex.status, json.loads(bytes(ex.body)) if ex.body else {}


async def wait_quiet(max_seconds: float, threshold: float = 0.3) -> float:
    """Wait (at most ``max_seconds``) until the machine's other load is below ``threshold``
    cores over a second; return the last reading."""
    from bench.machine import system_cpu

    deadline = time.monotonic() + max_seconds
    cores = os.cpu_count() or 1
    while True:
        b0, t0 = system_cpu()
        await asyncio.sleep(1.0)
        b1, t1 = system_cpu()
        busy = (b1 - b0) / (t1 - t0) * cores if t1 > t0 else 0.0
        if busy < threshold or time.monotonic() >= deadline:
            return round(busy, 3)
