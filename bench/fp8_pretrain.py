"""FP8 pretraining run: a byte-level Llama on the Python stdlib source whose decoder linear
layers run in FP8 (:mod:`signopt.fp8_linear`: E4M3 weights and activations, E5M2 output
gradients, per-tensor scaling), with bf16 parameters and no fp32 master copy.

Contenders (same model init, data order and step budget):

* AdamW (``torch.optim.AdamW``; on bf16 parameters its two moments are bf16 tensors);
* Lion, Signum, StoSignSGD (row envelope) with E4M3 state, ``param_rounding="stochastic"``;
* Lion with E4M3 state and ``param_rounding="nearest"`` (what is lost without SR).

Embeddings, RMSNorm weights and the LM head stay bf16 (not FP8). Which GEMM path (``_scaled_mm``
or emulation) each of forward/dgrad/wgrad uses is decided by timing both on this machine and
printed. Also printed: the bf16 parameter-rounding demonstration (lr=1e-4, |p|~0.05).

    PYTHONPATH=. python bench/fp8_pretrain.py --quick     # a few minutes on 2 cores
    PYTHONPATH=. python bench/fp8_pretrain.py             # the full run
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common_lm import (batch_at, build_llama, evaluate, fixed_eval_batches, lm_loss,  # noqa: E402
                             machine_banner, n_params, stdlib_corpus)
import signopt  # noqa: E402
from signopt.fp8_linear import FP8Paths, convert_linears, select_paths  # noqa: E402


def param_rounding_demo(lr: float = 1e-4, steps: int = 100, n: int = 4096) -> list[str]:
    """SignSGD on bf16 params with |p| ~ 0.05 and a constant gradient sign: nearest vs stochastic."""
    gen = torch.Generator().manual_seed(0)
    mag = 0.045 + 0.01 * torch.rand(n, generator=gen)
    sgn = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    p0 = (mag * sgn).to(torch.bfloat16)
    ulp = (2.0 ** (torch.floor(torch.log2(p0.float().abs())) - 7))
    out = [f"## bf16 parameter write: SignSGD lr={lr}, {steps} steps, {n} params with |p| in [0.045, 0.055] "
           f"(bf16 ulp {ulp.min().item():.3e}..{ulp.max().item():.3e}, half-ulp > lr), grad = sign(p) "
           f"(every step moves each |p| down by lr)",
           f"expected movement of each |p|: steps*lr = {steps * lr:.4e}"]
    for rounding in ("nearest", "stochastic"):
        p = torch.nn.Parameter(p0.clone())
        opt = signopt.SignSGD([p], lr=lr, param_rounding=rounding, seed=1, backend="torch")
        for _ in range(steps):
            p.grad = torch.sign(p.detach()).to(torch.bfloat16)
            opt.step()
        moved = (p0.float().abs() - p.detach().float().abs())
        out.append(f"  param_rounding={rounding:<10}: mean movement {moved.mean().item():.4e} "
                   f"({moved.mean().item() / (steps * lr):.3f} of expected), std over params "
                   f"{moved.std().item():.2e}, params that moved at all {(moved != 0).float().mean().item():.3f}")
    return out


def contenders(lr_sign: float, lr_adamw: float, wd: float) -> dict[str, tuple]:
    """Name -> (factory(params), state description)."""
    common = dict(state_dtype="fp8_e4m3", weight_decay=wd, seed=0, backend="torch")
    return {
        "AdamW (bf16 state)": (lambda ps: torch.optim.AdamW(ps, lr=lr_adamw, betas=(0.9, 0.95),
                                                          weight_decay=wd), "bf16 m, v (param dtype)"),
        "Lion E4M3 SR": (lambda ps: signopt.Lion(ps, lr=lr_sign, betas=(0.9, 0.99), param_rounding="stochastic",
                                                 **common), "E4M3 m, block 256"),
        "Signum E4M3 SR": (lambda ps: signopt.Signum(ps, lr=lr_sign, momentum=0.9, param_rounding="stochastic",
                                                     **common), "E4M3 m, block 256"),
        "StoSignSGD E4M3 SR (row)": (lambda ps: signopt.StoSignSGD(ps, lr=lr_sign, beta=0.9, envelope="row",
                                                                  param_rounding="stochastic", **common),
                                     "E4M3 m + fp32 row envelope"),
        "Lion E4M3 nearest": (lambda ps: signopt.Lion(ps, lr=lr_sign, betas=(0.9, 0.99), param_rounding="nearest",
                                                      **common), "E4M3 m, block 256"),
    }


def state_bytes_per_param(opt: torch.optim.Optimizer, numel: int) -> float:
    """Bytes of every tensor in ``opt.state`` per parameter element."""
    total = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                if isinstance(t, torch.Tensor))
    return total / numel


def lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def train(name: str, factory, args, paths: FP8Paths, train_data, evals) -> dict:
    """One contender's run: returns per-step train losses and the final held-out loss."""
    model = build_llama(**args.model, seq_len=args.seq, seed=0, dtype=torch.bfloat16)
    convert_linears(model.model.layers, paths)
    params = list(model.parameters())
    opt = factory(params)
    base = [g["lr"] for g in opt.param_groups]
    gen = torch.Generator().manual_seed(1)
    losses, t0 = [], time.time()
    for step in range(args.steps):
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * lr_factor(step, args.steps, args.warmup)
        loss = lm_loss(model, batch_at(train_data, args.batch, args.seq, gen))
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 50 == 0:
            print(f"    {name} step {step + 1}: loss {losses[-1]:.4f} ({time.time() - t0:.0f}s)", flush=True)
    final = evaluate(model, evals) if math.isfinite(losses[-1]) else float("nan")
    return {"name": name, "losses": losses, "heldout": final, "wall_s": time.time() - t0,
            "bpp": state_bytes_per_param(opt, n_params(model)), "n_params": n_params(model)}


def smooth(xs: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected EMA."""
    out, m = [], 0.0
    for i, x in enumerate(xs):
        m = beta * m + (1 - beta) * x
        out.append(m / (1 - beta ** (i + 1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr-sign", type=float, default=1e-3)
    ap.add_argument("--lr-adamw", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--target", type=float, default=None, help="train-loss target (smoothed), nats/byte")
    ap.add_argument("--out", default=None)
    ap.add_argument("--png", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.steps, args.batch, args.seq = 80, 8, 64
        args.model = dict(d_model=64, n_layers=2, n_heads=4, d_ff=192)
    else:
        args.model = dict(d_model=96, n_layers=3, n_heads=4, d_ff=256)
    if args.target is None:
        args.target = 3.0 if args.quick else 2.6
    args.warmup = max(args.steps // 20, 1)
    lines = ["# FP8 pretraining: FP8 linear layers, bf16 params (no fp32 master), byte-level Llama on the stdlib",
             machine_banner()]
    lines += param_rounding_demo() + [""]
    print("\n".join(lines), flush=True)
    m, k, n = args.batch * args.seq, args.model["d_model"], args.model["d_ff"]
    paths = select_paths(m, k, n)
    sel = [f"## GEMM paths, timed on this machine at the MLP shape x[{m},{k}] W[{n},{k}] "
           "(use _scaled_mm when >= 0.5x emulation's GFLOP/s):"]
    for gemm in ("forward", "dgrad", "wgrad"):
        r = paths.measured[gemm]
        kind = {"forward": "E4M3 x E4M3", "dgrad": "E5M2 x E4M3", "wgrad": "E5M2^T x E4M3"}[gemm]
        sel.append(f"  {gemm:<7} ({kind}): _scaled_mm {r['scaled_mm']:.2f} GFLOP/s, emulation "
                   f"{r['emulated']:.2f} GFLOP/s -> using {getattr(paths, gemm)}")
    train_data, held, info = stdlib_corpus()
    evals = fixed_eval_batches(held, 4 if args.quick else 8, args.batch, args.seq)
    probe = build_llama(**args.model, seq_len=args.seq, seed=0, dtype=torch.bfloat16)
    fp8_names = convert_linears(probe.model.layers, paths)
    fp8_numel = sum(p.numel() for nm, p in probe.named_parameters() if any(nm.startswith("model.layers." + f)
                                                                          for f in fp8_names))
    sel.append(f"model: Llama {args.model}, {n_params(probe)} params, bf16; {len(fp8_names)} FP8 linears "
               f"holding {fp8_numel} params; embeddings, norms, LM head bf16")
    sel.append(f"budget: {args.steps} steps x {args.batch} x {args.seq} = {args.steps * args.batch * args.seq} tokens; "
               f"warmup {args.warmup}, cosine to 10%; lr sign {args.lr_sign}, lr AdamW {args.lr_adamw}, wd {args.wd} "
               f"(decoupled); target = smoothed train loss {args.target}")
    sel.append("diverged = non-finite loss, or final smoothed loss > 1.5 x its minimum")
    print("\n".join(sel), flush=True)
    lines += sel
    results = []
    for name, (factory, desc) in contenders(args.lr_sign, args.lr_adamw, args.wd).items():
        r = train(name, factory, args, paths, train_data, evals)
        r["desc"] = desc
        results.append(r)
        print(f"  done {name}: final train {r['losses'][-1]:.4f} held-out {r['heldout']:.4f} ({r['wall_s']:.0f}s)",
              flush=True)
    tok_per_step = args.batch * args.seq
    table = ["", f"{'optimizer':<26} {'state':<28} {'B/param':>8} {'final train':>11} {'held-out':>9} "
             f"{'tokens to target':>16} {'diverged':>8}"]
    for r in results:
        s = smooth(r["losses"])
        finite = all(math.isfinite(x) for x in r["losses"])
        diverged = (not finite) or s[-1] > 1.5 * min(s)
        hit = next((i for i, x in enumerate(s) if x <= args.target), None)
        reach = "not reached" if hit is None else str((hit + 1) * tok_per_step)
        table.append(f"{r['name']:<26} {r['desc']:<28} {r['bpp']:>8.4f} {s[-1]:>11.4f} {r['heldout']:>9.4f} "
                     f"{reach:>16} {'yes' if diverged else 'no':>8}")
    table.append("(final train = smoothed train loss at the last step; held-out = mean over fixed held-out batches)")
    print("\n".join(table), flush=True)
    lines += table
    png = args.png or ("bench/results/lowp_fp8_pretrain_quick.png" if args.quick else "bench/results/lowp_fp8_pretrain.png")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        s = smooth(r["losses"])
        ax.plot([(i + 1) * tok_per_step for i in range(len(s))], s, label=r["name"])
    ax.axhline(args.target, color="gray", ls=":", lw=1)
    ax.set_xlabel("training tokens (bytes)")
    ax.set_ylabel("train loss, EMA 0.9 (nats/byte)")
    ax.set_title("FP8 linears, bf16 params: byte-level Llama on the stdlib")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    lines.append(f"plot: {png}")
    print(lines[-1])
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
