"""How many CPU threads torch may use: the cores this process gets, not the cores the machine has.

torch sizes its intra-op pool to the machine's cores. That is wrong in three common places, and
each costs far more than a thread too few: a container whose CPU quota is smaller than the host
(cgroup `cpu.max`), an `accelerate launch` with several CPU processes on one machine, and a
machine that other jobs already keep busy. Two CPU-heavy processes with two threads each on two
cores slow each other by 10-20x (BENCHMARKS.md, "One torch thread in tests"), while one thread
too few costs at most a factor of the threads.

`configure_threads()` (called by the `erase` command before any work, and by notebooks that use
the Python API) sets `torch.set_num_threads(n)` with

    n = max(1, min(affinity, quota) // local processes - other jobs' load)

where `affinity` is `os.sched_getaffinity`, `quota` the cgroup v2 `cpu.max` (or v1 CFS) limit
rounded up, `local processes` accelerate's LOCAL_WORLD_SIZE, and the load the 1-minute load
average beyond what this process's own siblings account for, rounded down. A user's choice wins:
`ERASE_THREADS=N`, or `OMP_NUM_THREADS` (which torch itself reads), leaves it alone. CUDA runs
are unaffected (the GPU does the work; the threads only feed it).
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's CFS quota (v2 `cpu.max`, else v1), None if unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores(root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota(root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def choose_threads(cores: int, local_processes: int = 1, load: float = 0.0) -> int:
    """Threads per process: an equal share of the cores, less the cores other jobs keep busy.

    `load` is the load average that is NOT this job's (other processes' runnable threads)."""
    share = max(1, cores // max(1, local_processes))
    busy = int(max(0.0, load) / max(1, local_processes))
    return max(1, share - busy)


def configure_threads(device: str = "cpu") -> int | None:
    """Set torch's intra-op threads for a CPU job (see the module docstring); the number, or None
    when the user chose (ERASE_THREADS / OMP_NUM_THREADS) or the job runs on a GPU."""
    import torch

    explicit = os.environ.get("ERASE_THREADS", "").strip()
    if explicit:
        try:
            n = max(1, int(explicit))
        except ValueError:
            from erase.errors import EraseError

            raise EraseError(f"ERASE_THREADS: {explicit!r} is not a whole number of threads") from None
        torch.set_num_threads(n)
        return n
    if os.environ.get("OMP_NUM_THREADS") or str(device).startswith("cuda") or torch.cuda.is_available():
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    # the load average counts this job's siblings once they run; at start-up they have not yet
    n = choose_threads(available_cores(), local, load)
    torch.set_num_threads(n)
    return n
