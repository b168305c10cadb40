"""Bytes per parameter of the optimizer state and of the whole training state (parameters +
gradients + optimizer state; no activations, no fp32 master copy) for signopt's optimizers and
the peers (torch AdamW and SGD, lion-pytorch, pytorch-optimizer, bitsandbytes, torchao), with
fp32 and with bf16 parameters. Lion runs with every state format but E5M2 (fp32, bf16, E4M3,
MXFP8, MXFP4, NVFP4-style), the other signopt optimizers with fp32, bf16 and E4M3. Every figure
is counted from the tensors allocated after one step (the untyped storage of each state tensor,
once per storage; a tensor subclass such as torchao's 4-bit state by its inner tensors), so it
holds on any machine. A peer that does not import is named under "peer missing" and has no row.

    python bench/training_state_memory.py --out bench/results/training_state_memory.txt
    python bench/training_state_memory.py --large ...   # also the ~61M-parameter list
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import signopt  # noqa: E402
from bench.provenance import provenance_line  # noqa: E402
from bench.state_memory import PARAM_LISTS, storage_bytes  # noqa: E402

Make = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
LION_STATES = {"fp32": {"state_dtype": "fp32"}, "bf16": {"state_dtype": "bf16"},
               "fp8_e4m3": {"state_dtype": "fp8_e4m3"}, "mxfp8_e4m3": {"state_dtype": "mxfp8_e4m3"},
               "mxfp4": {"state_dtype": "fp4_e2m1"},
               "nvfp4-style": {"state_dtype": "fp4_e2m1", "state_scale": "e4m3"}}
"""Lion's state label -> its options (MXFP4: E8M0 scales per 32; NVFP4-style: E4M3 scales per 16
and an fp32 tensor scale)."""


def contenders() -> tuple[list[tuple[str, str, Make]], list[str]]:
    """(name, state label, factory) for signopt and every peer that imports here; missing peers."""
    rows: list[tuple[str, str, Make]] = [("signopt SignSGD", "none", lambda ps: signopt.SignSGD(ps))]
    for label, kw in LION_STATES.items():
        rows.append(("signopt Lion", label, lambda ps, k=kw: signopt.Lion(ps, **k)))
    for fmt in ("fp32", "bf16", "fp8_e4m3"):
        rows += [
            ("signopt Signum", fmt, lambda ps, f=fmt: signopt.Signum(ps, state_dtype=f)),
            ("signopt StoSignSGD/row", fmt, lambda ps, f=fmt: signopt.StoSignSGD(ps, envelope="row", state_dtype=f)),
            ("signopt SignConversion/adamw/row", fmt,
             lambda ps, f=fmt: signopt.SignConversion(ps, base="adamw", envelope="row", state_dtype=f)),
        ]
    rows += [("torch AdamW", "param dtype", lambda ps: torch.optim.AdamW(ps, lr=1e-3)),
             ("torch SGD momentum", "param dtype", lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9))]
    missing = []
    try:
        from lion_pytorch import Lion as LionPT
        rows.append(("lion-pytorch Lion", "param dtype", lambda ps: LionPT(ps, lr=1e-4)))
    except ImportError as exc:
        missing.append(f"lion-pytorch: {exc}")
    try:
        import pytorch_optimizer as po
        rows.append(("pytorch-optimizer Lion", "param dtype", lambda ps: po.Lion(ps, lr=1e-4)))
    except ImportError as exc:
        missing.append(f"pytorch-optimizer: {exc}")
    try:
        import bitsandbytes as bnb
        rows += [("bitsandbytes Lion8bit", "int8", lambda ps: bnb.optim.Lion8bit(ps, lr=1e-4)),
                 ("bitsandbytes AdamW8bit", "int8", lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-4))]
    except ImportError as exc:
        missing.append(f"bitsandbytes: {exc}")
    try:
        from torchao.optim import AdamW4bit
        rows.append(("torchao AdamW4bit", "4-bit", lambda ps: AdamW4bit(ps, lr=1e-4)))
    except ImportError as exc:
        missing.append(f"torchao: {exc}")
    return rows, missing


def measure(shapes: list[tuple[int, ...]], dtype: torch.dtype, make: Make) -> tuple[int, int, int, int]:
    """(parameters, param bytes, grad bytes, state bytes) after one step on fresh parameters."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(dtype)
    opt = make(params)
    opt.step()
    numel = sum(p.numel() for p in params)
    nbytes = sum(p.untyped_storage().nbytes() for p in params)
    gbytes = sum(p.grad.untyped_storage().nbytes() for p in params)
    return numel, nbytes, gbytes, storage_bytes(opt)[0]


def table(label: str, shapes: list[tuple[int, ...]]) -> list[str]:
    rows, _ = contenders()
    out = [f"## {label}: {len(shapes)} tensors, {sum(torch.Size(s).numel() for s in shapes)} parameters", "",
           f"{'optimizer':<34} {'param':>5} {'state':>11} {'param B/p':>9} {'grad B/p':>8} "
           f"{'state B/p':>9} {'training B/p':>12}"]
    print("\n".join(out), flush=True)
    for dtype, dname in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for name, state, make in rows:
            try:
                n, pb, gb, sb = measure(shapes, dtype, make)
            except Exception as exc:  # noqa: BLE001  (a peer that rejects bf16 parameters says so)
                out.append(f"{name:<34} {dname:>5} {state:>11} does not run: {exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0][:100] if str(exc) else ''}")
            else:
                out.append(f"{name:<34} {dname:>5} {state:>11} {pb / n:>9.4f} {gb / n:>8.4f} {sb / n:>9.4f} "
                           f"{(pb + gb + sb) / n:>12.4f}")
            print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", action="store_true", help="also the ~61M-parameter list")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, missing = contenders()
    lines = [provenance_line(),
             "# Optimizer state and whole training state (parameters + gradients + optimizer state; "
             "no activations, no fp32 master copy), bytes per parameter, counted from the allocated "
             "tensors after one step",
             "signopt Lion state labels: mxfp4 = state_dtype='fp4_e2m1' (E8M0 scale per 32); nvfp4-style = "
             "state_dtype='fp4_e2m1', state_scale='e4m3' (E4M3 scale per 16 + fp32 tensor scale); tensors under "
             "fp8_min_numel (4096) keep fp32 state", *(f"peer missing: {m}" for m in missing), ""]
    print("\n".join(lines), flush=True)
    labels = list(PARAM_LISTS)[: 2 if args.large else 1]
    for label in labels:
        lines += table(label, PARAM_LISTS[label]()) + [""]
    if args.out:
        Path(args.out).write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
