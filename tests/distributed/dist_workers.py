"""Entry point of one rank started by :mod:`harness` (``python -m dist_workers SCENARIO OUT KWARGS``)."""
from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

torch.set_num_threads(1)

import torch.distributed as dist  # noqa: E402

import scenarios  # noqa: E402


def main() -> None:
    scenario, out, kwargs = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = timedelta(seconds=int(os.environ["SIGNOPT_PG_TIMEOUT"]))
    store = dist.TCPStore("127.0.0.1", int(os.environ["SIGNOPT_STORE_PORT"]), world + 1,
                          is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    result = getattr(scenarios, scenario)(rank, world, out, **kwargs)
    torch.save(result, out / f"result{rank}.pt")
    dist.barrier()  # every rank has saved its result; nobody still talks to a peer
    # Exit without tearing gloo down: under load its destructors occasionally abort the process
    # ("terminate called without an active exception", SIGABRT) after a finished run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
