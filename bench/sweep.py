"""Benchmark: one compare sweep of 12 MiniLM-size checkpoints on the serial, local and ray executors.

    python bench/sweep.py [--checkpoints 12] [--workers 2] [--repeats 3] [--keep DIR]

The checkpoints are all-MiniLM-L6-v2's tensors (the built-in model, read from its package: nothing is
downloaded) plus seeded Gaussian noise of 1 % x step of each tensor's standard deviation, saved as
step_NNNNN.safetensors (87 MiB each) in a temporary folder. Every run computes the whole sweep into a
fresh DuckDB file, in this one process, in rounds of serial, local, ray (so that a change in the load of
the shared machine falls on all three):

- serial: the sweep in this process (torch is already imported here, so it has no start-up);
- local: a process pool of --workers workers. Each run makes its pool inside the timed region; the first
  also starts the forkserver, which imports torch once (the cost every CLI run pays), so it is reported on
  its own ("cold") beside the median of the others ("warm");
- ray: a local Ray of --workers CPUs. Its start-up (ray.init) is timed on its own line; the first sweep
  on it pays for its workers importing torch ("cold"), the others reuse them ("warm").

Targets on this 2-core machine: local >= 1.6x serial counting the pool's start-up (the cold local run
against the serial median); ray within 20 % of local once its cluster is up (cold against cold: both
start workers that import torch); peak RSS of every worker < 1.5 GB (psutil, sampled every 50 ms, and
the kernel's high-water mark VmHWM where /proc has it). Every run fingerprints the files in the driver
(sha256, 1 GB) as a CLI run does: the files' mtimes are touched before each, which voids the in-process
cache of fingerprints.
OMP_NUM_THREADS is set to 1 before numpy or torch load: one BLAS thread per process, so that serial is
one core's speed and the two workers do not oversubscribe two cores.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import psutil  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diagnostics import sweep  # noqa: E402
from models.builtin import builtin_path  # noqa: E402
from models.checkpoints import discover  # noqa: E402

GB = 2**30


def make_checkpoints(folder: Path, n: int, seed: int = 0) -> None:
    """n copies of MiniLM's tensors, the floating ones with Gaussian noise of 1 % x step of their std."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(builtin_path("minilm") / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for step in range(1, n + 1):
        noisy = {}
        for name, w in weights.items():
            if not w.is_floating_point() or w.numel() < 2:  # position ids: kept as they are
                noisy[name] = w
                continue
            noise = torch.randn(w.shape, generator=g, dtype=w.dtype)
            noisy[name] = (w + 0.01 * step * float(w.std()) * noise).contiguous()
        save_file(noisy, folder / f"step_{step * 100:05d}.safetensors")


class RssSampler:
    """Peak resident memory of every process below this one, sampled every 50 ms (psutil); on Linux
    the kernel's high-water mark (VmHWM) of a process read while it lives, where it is higher."""

    def __init__(self):
        self.peaks: dict[int, float] = {}
        self.info: dict[int, tuple[int, str]] = {}  # pid -> (parent pid, first command line)
        self.ran: set[int] = set()  # Ray workers seen running the sweep's task (Ray retitles its workers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _hwm(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return float(line.split()[1]) * 1024
        except OSError:
            pass
        return 0.0

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                children = me.children(recursive=True)
            except psutil.Error:
                children = []
            for proc in children:
                try:
                    rss = max(proc.memory_info().rss, self._hwm(proc.pid))
                    command = " ".join(proc.cmdline())
                    self.info.setdefault(proc.pid, (proc.ppid(), command))
                    if "run_task" in command:
                        self.ran.add(proc.pid)
                except psutil.Error:
                    continue
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0.0), rss)
            time.sleep(0.05)

    def workers(self, executor: str) -> list[float]:
        """Peak RSS of the sweep's workers: the pool's processes (children of the forkserver) or the Ray
        workers seen running ``run_task`` (idle ones, prestarted by Ray, are left out), largest first."""
        if executor == "local":
            servers = {pid for pid, (_, cmd) in self.info.items() if "forkserver" in cmd}
            pids = [pid for pid in self.peaks if self.info[pid][0] in servers]
        else:
            pids = [pid for pid in self.peaks if pid in self.ran]
        return sorted((self.peaks[pid] for pid in pids), reverse=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def timed(func):
    start = time.perf_counter()
    value = func()
    return time.perf_counter() - start, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="sweeps per executor (the first of local and ray is cold)")
    parser.add_argument("--keep", type=Path, default=None, help="write the checkpoints here and keep them")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="orthoscope-bench-sweep-") as scratch:
        folder = args.keep or Path(scratch) / "run"
        folder.mkdir(parents=True, exist_ok=True)
        made, _ = timed(lambda: make_checkpoints(folder, args.checkpoints))
        checkpoints = discover(folder)
        size = sum(Path(c.spec).stat().st_size for c in checkpoints)
        print(f"bench/sweep.py: {len(checkpoints)} checkpoints of MiniLM size (all-MiniLM-L6-v2 + seeded noise), "
              f"{size / len(checkpoints) / 2**20:.0f} MiB each, made in {made:.1f} s")
        print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; {os.cpu_count()} cores; {args.workers} workers; "
              f"{args.repeats} sweeps per executor; {psutil.virtual_memory().total / GB:.0f} GB RAM; "
              f"load average {os.getloadavg()[0]:.1f} at the start")

        sampler = RssSampler()
        runs = iter(range(10_000))
        tables: dict[str, pd.DataFrame] = {}

        def sweep_once(executor: str) -> float:
            db = Path(scratch) / f"{executor}-{next(runs)}.duckdb"
            for c in checkpoints:  # a new mtime: every run fingerprints the files afresh, as a CLI run does
                os.utime(c.spec)
            seconds, result = timed(lambda: sweep.run(checkpoints, executor=executor, workers=args.workers, db=db))
            assert result.summary["ok"] == len(checkpoints) and result.summary["reused"] == 0, result.summary
            tables.setdefault(executor, result.tables()["layers"])
            db.unlink()
            return seconds

        # Rounds of serial, local, ray: a change in the machine's load (it is shared) falls on all three.
        serial, local, ray = [], [], []
        ray_start = math.nan
        for round_ in range(args.repeats):
            serial.append(sweep_once("serial"))
            local.append(sweep_once("local"))
            if round_ == 0:
                ray_start, _ = timed(lambda: sweep.start_ray(workers=args.workers))
            ray.append(sweep_once("ray"))
        local_rss, ray_rss = sampler.workers("local"), sampler.workers("ray")
        sampler.close()

        def warm(times: list[float]) -> str:
            if len(times) < 2:
                return "no warm run"
            shown = " ".join(f"{t:.1f}" for t in times[1:])
            return f"median of the {len(times) - 1} warm: {statistics.median(times[1:]):.1f} s: {shown}"

        serial_s = statistics.median(serial)
        print()
        print(f"serial                     : {serial_s:6.1f} s  (median of {len(serial)}: "
              f"{' '.join(f'{t:.1f}' for t in serial)})")
        print(f"local, {args.workers} workers (cold)    : {local[0]:6.1f} s  (pool and forkserver started, torch imported; "
              f"{warm(local)})")
        print(f"ray start-up (ray.init)    : {ray_start:6.1f} s  (a local cluster of {args.workers} CPUs)")
        print(f"ray, {args.workers} CPUs (cold)         : {ray[0]:6.1f} s  (cluster up, workers import torch; {warm(ray)})")
        print()
        speedup = serial_s / local[0]
        ratio = ray[0] / local[0]
        print(f"local / serial speed-up, counting the pool's start-up: {speedup:.2f}x  (target >= 1.6: "
              f"{'PASS' if speedup >= 1.6 else 'FAIL'})")
        if len(local) > 1:
            print(f"local / serial speed-up, warm pool: {serial_s / statistics.median(local[1:]):.2f}x")
        print(f"ray / local, once the cluster is up: {ratio:.2f}  (target <= 1.20: {'PASS' if ratio <= 1.2 else 'FAIL'})")
        if len(ray) > 1:
            print(f"ray / local, warm: {statistics.median(ray[1:]) / statistics.median(local[1:]):.2f}")
        peak = max(local_rss + ray_rss, default=float("nan"))
        print(f"peak RSS per worker: local {', '.join(f'{r / GB:.2f}' for r in local_rss)} GB; "
              f"ray {', '.join(f'{r / GB:.2f}' for r in ray_rss)} GB  (target < 1.5 GB: {'PASS' if peak < 1.5 * GB else 'FAIL'})")
        same = all(tables["serial"].equals(tables[ex]) for ex in ("local", "ray"))
        print(f"layer tables identical across serial, local and ray: {'yes' if same else 'NO'}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
