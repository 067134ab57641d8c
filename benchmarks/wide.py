"""A very wide foreach through `python flow.py dagster trigger --wait`, against native.

    python benchmarks/wide.py --width 1000 [--nested3 | --nested OUTERxINNER] [--native] [--postgres] [--ui]

(--nested3: a 3-level nested foreach of width**3 leaves; --nested 500x4: a 2-level one,
500 outer items of 4 leaves each, where a chunk, which never spans two outer items, is short)

Prints, for the Dagster run: whole-command wall time, the machine's CPU time split between
the forked step processes, the step zygote, the run worker and the rest (psutil, sampled
every 0.5 s), the run worker's peak RSS, the instance's storage per task (SQLite: the
instance's `history` directory's growth, which holds the runs, their snapshots and every
run's event log), compute logs per task, and throughput
(tasks finished per second) in each tenth of the run, so a run that slows down as it grows
shows it.
With --native it also times `python flow.py run --max-num-splits N` (Metaflow refuses
more than 100 splits by default) in the same invocation and prints the
ratio; without, give a native time measured earlier with --native-seconds (said so).
With --postgres the instance's storage is a throw-away PostgreSQL (the production set-up's
storage block only, no run queue or monitoring; the server without fsync, as the e2e tests
run it): the storage's growth is printed twice, the `event_logs` table's (indexes included)
and the whole database's (the same scope as SQLite's `history`). With --ui the run's page
is then timed in headless Chromium (`ui_run_page.py`) before the instance goes, which a
PostgreSQL instance needs: its database goes with the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flows  # noqa: E402

local_servers = flows.local_servers()
# what the instance holds on PostgreSQL: the event_logs table, and the whole database (runs,
# snapshots, event logs, indexes: the scope of SQLite's `history` directory)
_PG_SIZES = "SELECT pg_total_relation_size('event_logs'), pg_database_size(current_database())"


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy so far (/proc/stat): the run worker is detached
    and its steps are the zygote's children, so per-process accounting would miss them.
    Meaningful only on a quiet machine."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class _PeakRss(threading.Thread):
    """Peak RSS of the run worker (the process recorded in the run's worker tag), and the CPU
    time of the worker and of step zygotes (their own, and their reaped children's: the
    forked step processes), as last seen (sampled every 0.5 s)."""

    def __init__(self, home: Path) -> None:
        super().__init__(daemon=True)
        self.home, self.peak, self.stop = home, 0, threading.Event()
        self.worker_cpu = 0.0
        self.zygotes: dict[int, tuple[float, float]] = {}  # pid -> (own, reaped children)

    def run(self) -> None:
        import psutil
        from dagster import DagsterInstance

        from dagster_metaflow.runtime.proc_start import tag_pid
        from dagster_metaflow.runtime.worker import TAG_WORKER

        os.environ["DAGSTER_HOME"] = str(self.home)
        pid = None
        with DagsterInstance.get() as instance:
            while not self.stop.is_set():
                if pid is None:
                    runs = instance.get_runs(limit=1)
                    tag = runs[0].tags.get(TAG_WORKER) if runs else None
                    pid = tag_pid(tag) if tag else None
                if pid is not None:
                    try:
                        proc = psutil.Process(pid)
                        self.peak = max(self.peak, proc.memory_info().rss)
                        t = proc.cpu_times()
                        self.worker_cpu = t.user + t.system
                    except psutil.Error:
                        pass
                self._sample_zygotes(psutil)
                self.stop.wait(0.5)

    def _sample_zygotes(self, psutil: Any) -> None:
        for proc in psutil.process_iter(["cmdline"]):
            # a step zygote's command line reads as one string once setproctitle holds it
            words = " ".join(proc.info["cmdline"] or []).split()
            if "serve(*sys.argv[1:])" not in words or "step" not in words:
                continue
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            self.zygotes[proc.pid] = (t.user + t.system, t.children_user + t.children_system)


def _throughput(home: Path) -> tuple[str, float, int]:
    """(tasks/s per tenth of the run, run seconds, Metaflow tasks) from STEP_SUCCESS events
    (a chunk op's counts its chunk's tasks, at its end)."""
    from dagster import DagsterEventType, DagsterInstance

    from dagster_metaflow.runs import tasks_of

    os.environ["DAGSTER_HOME"] = str(home)
    with DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        stats = instance.get_run_stats(run.run_id)
        recs = instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.STEP_SUCCESS, limit=10_000_000
        ).records
        done = sorted(
            (r.event_log_entry.timestamp, tasks_of(r.event_log_entry.step_key or "")) for r in recs
        )
        t0, t1 = stats.start_time or done[0][0], stats.end_time or done[-1][0]
        span = max(t1 - t0, 1e-6)
        buckets = [0] * 10
        for t, n in done:
            buckets[min(9, int((t - t0) / span * 10))] += n
        rates = " ".join(f"{b / (span / 10):.0f}" for b in buckets)
        return rates, span, sum(n for _t, n in done)


def _storage_bytes(pg: dict[str, str] | None, home: Path) -> list[int]:
    """What the instance's storage holds now: on PostgreSQL the event_logs table and the whole
    database, on SQLite the `history` directory."""
    if pg:
        return [int(n) for n in local_servers.pg_query(pg, _PG_SIZES)[0]]
    return [_dir_size(home / "history")]


def _postgres_storage(pg: dict[str, str]) -> str:
    """The instance's storage block for the throw-away server (the README's production
    dagster.yaml, without its run queue: the CLI launches the run worker itself)."""
    db = {
        "username": pg["DAGSTER_PG_USER"],
        "password": pg["DAGSTER_PG_PASSWORD"],
        "hostname": pg["DAGSTER_PG_HOST"],
        "port": int(pg["DAGSTER_PG_PORT"]),
        "db_name": pg["DAGSTER_PG_DB"],
        "scheme": "postgresql+psycopg2",
    }
    return yaml.safe_dump({"storage": {"postgres": {"postgres_db": db}}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--nested3", action="store_true", help="a 3-level nested foreach width x width x width")
    ap.add_argument("--nested", metavar="OUTERxINNER", help="a 2-level nested foreach, e.g. 500x4 (--width ignored)")
    ap.add_argument("--native", action="store_true", help="also time `python flow.py run`")
    ap.add_argument("--native-seconds", type=float, help="a native time measured earlier")
    ap.add_argument("--keep", help="use this directory and keep it")
    ap.add_argument("--postgres", action="store_true", help="the instance on a throw-away PostgreSQL")
    ap.add_argument("--ui", action="store_true", help="then time the run's page (benchmarks/ui_run_page.py)")
    args = ap.parse_args()
    if args.keep and args.postgres:
        ap.error("--keep with --postgres would keep an instance whose database is gone")
    if args.nested:
        try:
            outer, inner = (int(n) for n in args.nested.lower().split("x"))
        except ValueError:
            ap.error(f"--nested {args.nested!r}: give OUTERxINNER, e.g. 500x4")
        name, source = flows.nested(outer, inner)
        tasks_of_width, shape = outer * inner, f"{outer}x{inner} nested"
    elif args.nested3:
        name, source = flows.nested3(args.width)
        tasks_of_width, shape = args.width**3, f"{args.width}x{args.width}x{args.width} nested"
    else:
        name, source = flows.foreach(args.width)
        tasks_of_width, shape = args.width, f"width {args.width}"
    with tempfile.TemporaryDirectory(prefix="dm-bench-wide-") as tmp, contextlib.ExitStack() as stack:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        env = flows.bench_env(root)
        home = root / "home"
        try:
            pg = stack.enter_context(local_servers.postgres_server()) if args.postgres else None
        except (local_servers.Unavailable, RuntimeError, ImportError) as exc:
            raise SystemExit(f"--postgres: {exc}") from None
        if pg:
            with open(home / "dagster.yaml", "a") as f:
                f.write(_postgres_storage(pg))
        flow = root / f"{name.lower()}.py"
        flow.write_text(source)
        py = sys.executable
        subprocess.run([py, flow.name, "dagster", "create", f"{name.lower()}_dagster.py"], cwd=root, env=env, check=True, capture_output=True)
        before = _storage_bytes(pg, home)
        native = args.native_seconds
        if args.native:
            t0, c0 = time.perf_counter(), _busy_cpu_seconds()
            subprocess.run([py, flow.name, "run", "--max-num-splits", str(tasks_of_width + 1)], cwd=root, env=env, check=True, capture_output=True)
            native = time.perf_counter() - t0
            cpu = _busy_cpu_seconds() - c0
            print(f"native `flow.py run`: {native:.1f}s, {cpu:.0f} CPU-s = {cpu / tasks_of_width:.3f} CPU-s/task", flush=True)
        sampler = _PeakRss(home)
        sampler.start()
        t0, c0 = time.perf_counter(), _busy_cpu_seconds()
        proc = subprocess.run([py, flow.name, "dagster", "trigger", "--wait"], cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        cpu = _busy_cpu_seconds() - c0
        sampler.stop.set()
        sampler.join()
        if proc.returncode:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit("the run failed")
        rates, span, tasks = _throughput(home)
        grown = [b - a for a, b in zip(before, _storage_bytes(pg, home), strict=True)]
        logs = _dir_size(home / "storage") - _dir_size(home / "storage" / "dagster_metaflow_io")
        chunking = os.environ.get("DAGSTER_METAFLOW_CHUNK_ABOVE", "default")
        storage = "PostgreSQL" if pg else "SQLite"
        print(f"{shape}: `trigger --wait` {wall:.1f}s (run {span:.1f}s, {tasks} tasks; DAGSTER_METAFLOW_CHUNK_ABOVE={chunking}; {storage})")
        if native:
            print(f"  ratio to native ({native:.1f}s{'' if args.native else ', given'}): {wall / native:.2f}x")
        print(f"  {cpu:.0f} CPU-s = {cpu / tasks_of_width:.3f} CPU-s/leaf task (whole machine, this sampler included)")
        steps = sum(children for _own, children in sampler.zygotes.values())
        zygotes = sum(own for own, _children in sampler.zygotes.values())
        rest = cpu - steps - zygotes - sampler.worker_cpu
        parts = [
            ("forked step processes", steps),
            ("step zygote", zygotes),
            ("run worker", sampler.worker_cpu),
            ("the rest (CLI, sampler, kernel" + (", PostgreSQL)" if pg else ")"), rest),
        ]
        print("  CPU-s per leaf task: " + ", ".join(f"{name} {v / tasks_of_width:.4f}" for name, v in parts))
        print(f"  run worker peak RSS {sampler.peak / 2**20:.0f} MB")
        scopes = ["event_logs table", "whole database"] if pg else ["history directory"]
        storage_line = "; ".join(f"{what} {n / 2**20:.1f} MB = {n / tasks / 1024:.1f} KB/task" for what, n in zip(scopes, grown, strict=True))
        print(f"  instance storage: {storage_line}; compute logs etc. {logs / 2**20:.1f} MB = {logs / tasks / 1024:.1f} KB/task")
        print(f"  tasks/s by tenth of the run: {rates}")
        if args.ui:  # while the instance (and its PostgreSQL) is still there
            ui = Path(__file__).resolve().parent / "ui_run_page.py"
            subprocess.run([py, str(ui), str(home)], cwd=root, env=env, check=True)


if __name__ == "__main__":
    main()
