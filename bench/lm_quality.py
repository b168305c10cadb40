"""Quality of Lion with E4M3 optimizer state vs fp32 state on a small byte-level Llama
pretrained on the Python standard library's own source (offline corpus, fixed file split).

Per seed (model init, data order and optimizer seed all keyed by it; the same seeds for both
state formats) it trains for a fixed step budget and reports the final held-out loss. For the
E4M3 runs it also measures, directly on the optimizer's state, how often the stored FP8 ``m``
flips the sign of Lion's update ``c = beta1*m + (1-beta1)*g`` relative to fp32:

* one-step: ``m_fresh`` (the fp32 value the optimizer computed and then encoded) vs its stored
  FP8 decode, both combined with the next step's gradient;
* accumulated: the stored FP8 ``m`` vs a shadow fp32 ``m`` carried alongside from step 0 on
  the same gradients.

Fractions are over the elements of FP8-stored tensors (tensors under ``fp8_min_numel`` keep
fp32 state and cannot flip).

    PYTHONPATH=. python bench/lm_quality.py            # full run: 6 x 500 steps, 2 runs in parallel;
                                                       # took 54 min wall here (load average ~8 on 2 cores)
    PYTHONPATH=. python bench/lm_quality.py --quick    # smoke run, ~2 min
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common_lm import (batch_at, build_llama, evaluate, fixed_eval_batches, lm_loss,  # noqa: E402
                             machine_banner, n_params, stdlib_corpus)
import signopt  # noqa: E402
from signopt import declaration, state_layout  # noqa: E402

MODEL = dict(d_model=192, n_layers=4, n_heads=6, d_ff=512)
BETAS = (0.9, 0.99)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _signs_differ(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((torch.sign(a) != torch.sign(b)).sum())


def run(cfg: dict) -> dict:
    """One training run; returns losses and (for FP8 state) sign-flip counts."""
    torch.set_num_threads(1)
    seed, state_dtype = cfg["seed"], cfg["state_dtype"]
    train, held, _ = stdlib_corpus()
    model = build_llama(**MODEL, seq_len=cfg["seq"], seed=seed)
    params = [p for p in model.parameters()]
    opt = signopt.Lion(params, lr=cfg["lr"], betas=BETAS, weight_decay=cfg["wd"],
                       state_dtype=state_dtype, state_block=cfg["block"], seed=seed, backend="torch",
                       state_rounding=cfg["state_rounding"])
    b1, b2 = BETAS
    gen = torch.Generator().manual_seed(10_000 + seed)
    evals = fixed_eval_batches(held, cfg["eval_batches"], cfg["batch"], cfg["seq"])
    fp8 = state_dtype.startswith("fp8")
    shadow: dict[torch.Tensor, torch.Tensor] = {}
    pending: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}
    flips = {"one_step": 0, "accumulated": 0, "elements": 0, "measured_steps": 0,
             "one_step_small": 0, "small": 0}
    curve = []
    t0 = time.time()
    for step in range(cfg["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg["steps"], cfg["lr"], cfg["warmup"])
        tokens = batch_at(train, cfg["batch"], cfg["seq"], gen)
        loss = lm_loss(model, tokens)
        loss.backward()
        if fp8:
            with torch.no_grad():
                measure = step > 0 and step % cfg["flip_every"] == 0
                prep = step % cfg["flip_every"] == cfg["flip_every"] - 1
                if pending:  # one-step flips: fresh fp32 m vs its stored FP8 decode, next grad
                    flips["measured_steps"] += 1
                for p in params:
                    g = p.grad.float()
                    st = opt.state.get(p, {})
                    is_fp8 = "m" in st and declaration.FORMATS[
                        state_layout.format_of(st["m"], st.get("m_scale"))].block_scaled
                    if not st:
                        shadow[p] = torch.zeros_like(g)
                    if measure and is_fp8 and p in pending:
                        m_fresh, m_stored = pending[p]
                        c_fresh = m_fresh * b1 + g * (1 - b1)
                        c_stored = m_stored * b1 + g * (1 - b1)
                        flips["one_step"] += _signs_differ(c_fresh, c_stored)
                        small = c_fresh.abs() < 1e-3 * c_fresh.abs().max()
                        flips["small"] += int(small.sum())
                        flips["one_step_small"] += int(((torch.sign(c_fresh) != torch.sign(c_stored)) & small).sum())
                        c_shadow = shadow[p] * b1 + g * (1 - b1)
                        flips["accumulated"] += _signs_differ(c_shadow, c_stored)
                        flips["elements"] += g.numel()
                    if prep and is_fp8:
                        m_dec = state_layout.read(opt.rule(), st, declaration.M, tuple(p.shape))
                        pending[p] = (m_dec * b2 + g * (1 - b2), None)  # fresh value, as reference.ema
                    shadow[p] = shadow[p] * b2 + g * (1 - b2)
                if measure:
                    pending.clear()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if fp8 and pending and pending[next(iter(pending))][1] is None:
            for p in list(pending):
                pending[p] = (pending[p][0], state_layout.read(opt.rule(), opt.state[p], declaration.M,
                                                               tuple(p.shape)))
        if (step + 1) % cfg["log_every"] == 0 or step + 1 == cfg["steps"]:
            curve.append((step + 1, float(loss.detach())))
    final = evaluate(model, evals)
    return {**cfg, "final_heldout": final, "curve": curve, "flips": flips, "wall_s": time.time() - t0,
            "state_bytes": opt.state_bytes(), "n_params": n_params(model), "finite": math.isfinite(final)}


def compare(by: dict[str, list[float]]) -> list[str]:
    """E4M3 vs fp32 held-out: difference, paired differences and the tolerance verdict."""
    out: list[str] = []
    m32, m8 = statistics.mean(by["fp32"]), statistics.mean(by["fp8_e4m3"])
    spread = max(by["fp32"]) - min(by["fp32"])
    tol = max(spread, 0.01 * m32)
    diff = m8 - m32
    paired = [b - a for a, b in zip(by["fp32"], by["fp8_e4m3"])]
    out.append(f"E4M3 - fp32 mean held-out: {diff:+.4f} ({100 * diff / m32:+.2f}%); paired per-seed "
               f"differences {', '.join(f'{d:+.4f}' for d in paired)}")
    out.append(f"tolerance = max(fp32 seed range {spread:.4f}, 1% of fp32 mean {0.01 * m32:.4f}) = {tol:.4f} "
               f"-> E4M3 {'WITHIN' if abs(diff) <= tol else 'OUTSIDE'} tolerance")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed per format, 40 steps")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=2, help="parallel runs (1 thread each)")
    ap.add_argument("--state-rounding", default="nearest", choices=("nearest", "stochastic"),
                    help="rounding of the E4M3 state writes")
    ap.add_argument("--formats", default="fp32,fp8_e4m3", help="comma list of state formats to run")
    ap.add_argument("--out", default=None, help="also write the report here")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.seeds = 40, 1
    torch.set_num_threads(1)
    base = dict(steps=args.steps, batch=args.batch, seq=args.seq, lr=args.lr, wd=args.wd,
                block=args.block, warmup=max(args.steps // 20, 1), eval_batches=4 if args.quick else 16,
                flip_every=10 if args.quick else 25, log_every=max(args.steps // 10, 1),
                state_rounding=args.state_rounding)
    formats = tuple(args.formats.split(","))
    cfgs = [dict(base, seed=s, state_dtype=f) for s in range(args.seeds) for f in formats]
    _, _, info = stdlib_corpus()
    lines = ["# Lion fp32 state vs E4M3 state: small byte-level Llama on the Python stdlib source",
             machine_banner() + f" | parallel runs {args.jobs} (1 thread each)",
             f"corpus: {info['root']}/*.py, {info['files']} files sorted, every 10th held out: "
             f"train {info['train_bytes']} bytes ({info['train_files']} files), held-out "
             f"{info['heldout_bytes']} bytes ({info['heldout_files']} files); tokens = bytes (vocab 256)",
             f"model: LlamaForCausalLM {MODEL}, untied, seq {args.seq}",
             f"budget: {args.steps} steps x {args.batch} x {args.seq} = {args.steps * args.batch * args.seq} "
             f"train tokens per run; Lion lr {args.lr} (warmup {base['warmup']}, cosine to 10%), betas {BETAS}, "
             f"wd {args.wd}; E4M3 block {args.block}, {args.state_rounding} state rounding, fp8_min_numel 4096",
             f"held-out loss: mean over {base['eval_batches']} fixed batches of {args.batch}x{args.seq} (nats/byte)",
             ""]
    print("\n".join(lines), flush=True)
    t0 = time.time()
    if args.jobs > 1:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(run, cfgs)
    else:
        results = [run(c) for c in cfgs]
    out = []
    out.append(f"{'seed':>4} {'state':>9} {'params':>8} {'B/param':>8} {'train loss (last)':>18} "
               f"{'held-out':>9} {'wall s':>7}")
    for r in results:
        out.append(f"{r['seed']:>4} {r['state_dtype']:>9} {r['n_params']:>8} {r['state_bytes']['per_param']:>8.4f} "
                   f"{r['curve'][-1][1]:>18.4f} {r['final_heldout']:>9.4f} {r['wall_s']:>7.0f}")
    by = {f: [r["final_heldout"] for r in results if r["state_dtype"] == f] for f in formats}
    out.append("")
    for f, v in by.items():
        sd = statistics.stdev(v) if len(v) > 1 else float("nan")
        out.append(f"{f:>9}: mean {statistics.mean(v):.4f}  std {sd:.4f}  min {min(v):.4f}  max {max(v):.4f}  "
                   f"range {max(v) - min(v):.4f}")
    if set(formats) >= {"fp32", "fp8_e4m3"}:
        out += compare(by)
    fl = [r["flips"] for r in results if r["state_dtype"] == "fp8_e4m3"]
    el = sum(f["elements"] for f in fl)
    if el:
        one = sum(f["one_step"] for f in fl)
        acc = sum(f["accumulated"] for f in fl)
        small = sum(f["small"] for f in fl)
        one_small = sum(f["one_step_small"] for f in fl)
        out.append("")
        out.append(f"sign flips of Lion's c from E4M3 state (measured every {base['flip_every']} steps, "
                   f"{sum(f['measured_steps'] for f in fl)} measurements, {el} element-observations over FP8 tensors):")
        out.append(f"  one-step (fresh fp32 m vs its stored E4M3 decode, next grad): {one} = {one / el:.3e} of coordinates")
        out.append(f"  of which at |c| < 1e-3 * max|c| of the tensor: {one_small} of {small} such coordinates "
                   f"({(one_small / small if small else float('nan')):.3e})")
        out.append(f"  accumulated (stored E4M3 m vs shadow fp32 m carried from step 0, same grads): {acc} = {acc / el:.3e}")
    out.append("")
    out.append("loss curves (train loss at step, seed 0):")
    for r in results:
        if r["seed"] == 0:
            out.append(f"  {r['state_dtype']:>9}: " + " ".join(f"{s}:{l:.3f}" for s, l in r["curve"]))
    out.append(f"total wall time {time.time() - t0:.0f} s")
    print("\n".join(out), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines + out) + "\n")


if __name__ == "__main__":
    main()
