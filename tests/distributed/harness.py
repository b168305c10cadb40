"""Start ``world_size`` real processes on this machine and collect what each rank returns.

Each rank is a fresh ``python -m dist_workers`` subprocess (its own session, one torch
thread) that joins a gloo process group through a ``TCPStore`` owned by the calling process,
so no port is guessed. The parent polls: a rank that exits non-zero, or a run that passes its
deadline, makes every other rank be killed at once and :class:`WorkerFailed` be raised with
each rank's stderr tail; nothing is left running either way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


LAST_PIDS: list[int] = []  # the ranks of the latest run (all reaped when run returns)


class WorkerFailed(RuntimeError):
    """A rank crashed, or the run passed its deadline."""


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run(scenario: str, world_size: int, tmp_path: Path, timeout: float = 90.0,
        **kwargs: Any) -> list[Any]:
    """Run ``dist_workers.<scenario>(rank, world_size, **kwargs)`` on ``world_size`` ranks and
    return each rank's result (loaded with ``weights_only=True``)."""
    if not 1 <= world_size <= 4:
        raise ValueError(f"world_size must be in [1, 4], got {world_size}")
    out = Path(tmp_path) / f"{scenario}-{world_size}-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    store = dist.TCPStore("127.0.0.1", 0, world_size + 1, is_master=True,
                          timeout=timedelta(seconds=timeout), wait_for_workers=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "SIGNOPT_STORE_PORT": str(store.port), "WORLD_SIZE": str(world_size),
           "SIGNOPT_PG_TIMEOUT": str(int(timeout))}
    procs = []
    try:
        for rank in range(world_size):
            err = open(out / f"stderr{rank}.txt", "wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dist_workers", scenario, str(out), json.dumps(kwargs)],
                env={**env, "RANK": str(rank)}, stdout=err, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=str(ROOT)))
            err.close()
        LAST_PIDS[:] = [p.pid for p in procs]
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if failed or time.monotonic() > deadline:
                why = (f"rank(s) {failed} exited with {[codes[r] for r in failed]}" if failed
                       else f"deadline of {timeout:.0f}s passed")
                logs = "\n".join(f"--- rank {r} ---\n{_tail(out / f'stderr{r}.txt')}"
                                 for r in range(world_size))
                raise WorkerFailed(f"{scenario}: {why}\n{logs}")
            if all(c == 0 for c in codes):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        del store
    return [torch.load(out / f"result{r}.pt", weights_only=True) for r in range(world_size)]
