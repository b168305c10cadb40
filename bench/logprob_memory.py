"""Peak memory and time of per-token log-probs + entropy (forward and backward): the chunked
path (signopt.rl.logprob.chunked_logprobs) against full [N, V] logits.

How memory is measured: each (path, V) runs in a fresh subprocess, which builds its inputs, reads
its resident set size (VmRSS from /proc/self/status), runs forward + backward once and reads the
peak resident set size (VmHWM). "peak extra" = VmHWM − VmRSS before the run: every byte the step
itself touched, including the LM-head weight gradient (identical for both paths). Results are
compared (max |Δ| of log-probs, entropies and the hidden-state gradient) against the naive path.

    python bench/logprob_memory.py            # N = 1024 rows, H = 256, V = 32k and 152k
    python bench/logprob_memory.py --quick    # N = 256 rows
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(path: str, rows: int, hidden: int, vocab: int, repeats: int) -> dict:
    import torch

    from signopt.rl.logprob import chunked_logprobs, naive_logprobs

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, hidden, generator=g).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_(True)
    y = torch.randint(0, vocab, (rows,), generator=g)
    fn = chunked_logprobs if path == "chunked" else naive_logprobs

    def step():
        h.grad = w.grad = None
        logp, ent = fn(h, w, y)
        logp.sum().backward()
        return logp.detach(), ent.detach(), h.grad.clone()

    before = _proc_kib("VmRSS")
    logp, ent, gh = step()
    peak = _proc_kib("VmHWM")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    torch.save({"logp": logp, "ent": ent, "gh": gh}, os.environ["LOGPROB_BENCH_OUT"])
    return {"peak_extra_mib": (peak - before) / 1024, "time_min_s": min(times), "time_median_s": sorted(times)[len(times) // 2]}


def run(path: str, rows: int, hidden: int, vocab: int, repeats: int, out_file: str) -> dict:
    env = dict(os.environ, LOGPROB_BENCH_OUT=out_file)
    cmd = [sys.executable, __file__, "--worker", path, str(rows), str(hidden), str(vocab), str(repeats)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], *map(int, sys.argv[3:7]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 rows and 2 timing repeats")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocabs", default="32000,152064")
    args = ap.parse_args()
    rows = args.rows or (256 if args.quick else 1024)
    repeats = 2 if args.quick else 3
    import tempfile

    import torch

    print(f"rows N={rows} hidden H={args.hidden} threads=1 (torch {torch.__version__}); peak extra = VmHWM − VmRSS "
          f"in a fresh process per case")
    print(f"{'V':>7} {'path':>8} {'peak extra MiB':>15} {'time min s':>11} {'time med s':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in map(int, args.vocabs.split(",")):
            res = {}
            for path in ("naive", "chunked"):
                res[path] = run(path, rows, args.hidden, vocab, repeats, f"{tmp}/{path}.pt")
                r = res[path]
                print(f"{vocab:>7} {path:>8} {r['peak_extra_mib']:>15.1f} {r['time_min_s']:>11.3f} {r['time_median_s']:>11.3f}")
            a, b = torch.load(f"{tmp}/naive.pt"), torch.load(f"{tmp}/chunked.pt")
            diff = {k: float((a[k] - b[k]).abs().max()) for k in a}
            ratio = res["chunked"]["peak_extra_mib"] / res["naive"]["peak_extra_mib"]
            print(f"{vocab:>7} chunked/naive peak = {ratio:.1%}, time = "
                  f"{res['chunked']['time_min_s'] / res['naive']['time_min_s']:.2f}x; max |diff| logp "
                  f"{diff['logp']:.2e}, entropy {diff['ent']:.2e}, grad {diff['gh']:.2e}")


if __name__ == "__main__":
    main()
