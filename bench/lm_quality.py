"""Quality of low-precision optimizer state: Lion and StoSignSGD with fp32, bf16, E4M3, MXFP8
(E4M3), MXFP4 and NVFP4-style state, each low-precision format with nearest and with stochastic
state rounding, on a small byte-level Llama pretrained on the Python standard library's own
source (offline corpus, fixed file split).

Every config trains the same seeds (model init, data order and optimizer seed all keyed by the
seed) for a fixed step budget, evaluates the held-out loss at about 10 points during training and
reports the final one per seed, the mean and std over seeds and the difference from the same
optimizer's fp32-state mean. For every low-precision config it also measures, directly on the
optimizer's state, how often storing ``m`` in that format flips the sign of the next step's
direction (Lion's ``c = beta1*m + (1-beta1)*g``; StoSignSGD's momentum ``beta*m + (1-beta)*g``,
the sign of its expected update):

* one-step: ``m_fresh`` (the fp32 value the optimizer computed and then stored) vs its stored
  decode, both combined with the next step's gradient;
* accumulated: the stored ``m`` vs a shadow fp32 ``m`` carried alongside from step 0 on the same
  gradients.

Fractions are over the elements of low-precision tensors (tensors under ``fp8_min_numel`` keep
fp32 state and cannot flip). Runs use the ``cpp`` backend where it runs the format and the
``torch`` backend for NVFP4-style state (the backends are bit-identical by the numerics
contract); the report names the backend each config ran on. One process, one thread.

    python bench/lm_quality.py --out bench/results/lm_quality_state_formats.txt \\
        --plot bench/results/lm_quality_state_formats.png     # the study: 2 x 11 configs x 5 seeds
    python bench/lm_quality.py --lr-check 1e-3,2e-3,4e-3 --out bench/results/lm_quality_lr_check.txt
    python bench/lm_quality.py --quick                         # smoke run: every config, 1 seed, 30 steps
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from bench.common_lm import (batch_at, build_llama, evaluate, fixed_eval_batches, lm_loss,  # noqa: E402
                             machine_banner, n_params, stdlib_corpus)
from bench.provenance import provenance_line  # noqa: E402
import signopt  # noqa: E402
from signopt import declaration, state_layout  # noqa: E402

OPTIMIZERS = {
    # name: (class, options, beta of the next direction, beta of the stored m)
    "Lion": (signopt.Lion, {"betas": (0.9, 0.99)}, 0.9, 0.99),
    "StoSignSGD": (signopt.StoSignSGD, {"beta": 0.9}, 0.9, 0.9),
}
STATES = {
    "fp32": {"state_dtype": "fp32"},
    "bf16": {"state_dtype": "bf16"},
    "fp8_e4m3": {"state_dtype": "fp8_e4m3"},
    "mxfp8_e4m3": {"state_dtype": "mxfp8_e4m3"},
    "mxfp4": {"state_dtype": "fp4_e2m1"},
    "nvfp4-style": {"state_dtype": "fp4_e2m1", "state_scale": "e4m3"},
}
"""State label -> options: FP8 E4M3 with an fp32 scale per 256; MXFP8 E4M3 with an E8M0 scale per
32; MXFP4 (E2M1, E8M0 scale per 32); NVFP4-style (E2M1, E4M3 scale per 16, fp32 tensor scale)."""
FOUR_BIT = ("mxfp4", "nvfp4-style")
TOLERANCE_PCT = 3.0  # a 4-bit format is "within" when its mean held-out loss is within this of fp32's


def backend_for(state: str) -> str:
    """``cpp`` where its kernels run the format; ``torch`` for NVFP4-style state (which needs a
    whole-tensor absmax pass the fused kernels do not have)."""
    return "torch" if STATES[state].get("state_scale") == "e4m3" else "cpp"


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass(frozen=True)
class Config:
    opt: str
    state: str
    rounding: str  # "nearest" | "stochastic" ("-" for fp32 state, which rounds nothing)
    lr: float

    @property
    def label(self) -> str:
        return f"{self.opt} {self.state} {self.rounding}"


@dataclass
class FlipMeter:
    """Sign flips of the next step's direction caused by storing ``m`` in low precision (module
    docstring). Measured every ``every`` steps: on a step ``= -1 (mod every)`` the fresh fp32 ``m``
    is computed before ``opt.step()`` and the stored decode read after it; on the next step both
    meet that step's gradient."""

    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    beta_c: float
    beta_m: float
    every: int
    one_step: int = 0
    accumulated: int = 0
    elements: int = 0
    measurements: int = 0
    shadow: dict = field(default_factory=dict)
    pending: dict = field(default_factory=dict)

    def _m(self, p: torch.nn.Parameter) -> torch.Tensor:
        return state_layout.read(self.opt.rule(), self.opt.state[p], declaration.M, tuple(p.shape))

    def _lowp(self, p: torch.nn.Parameter) -> bool:
        st = self.opt.state.get(p)
        return bool(st) and state_layout.format_of(*state_layout.stored(self.opt.rule(), st, declaration.M)) != "fp32"

    def _dir(self, m: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return m * self.beta_c + g * (1 - self.beta_c)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        measure = step > 0 and step % self.every == 0 and bool(self.pending)
        prep = step % self.every == self.every - 1
        for p in self.params:
            g = p.grad.float()
            if p not in self.shadow:
                self.shadow[p] = torch.zeros_like(g)
            if measure and p in self.pending:
                m_fresh, m_stored = self.pending[p]
                c_stored = self._dir(m_stored, g)
                self.one_step += int((torch.sign(self._dir(m_fresh, g)) != torch.sign(c_stored)).sum())
                self.accumulated += int((torch.sign(self._dir(self.shadow[p], g)) != torch.sign(c_stored)).sum())
                self.elements += g.numel()
            if prep and self._lowp(p):
                self.pending[p] = (self._m(p) * self.beta_m + g * (1 - self.beta_m), None)
            self.shadow[p] = self.shadow[p] * self.beta_m + g * (1 - self.beta_m)
        if measure:
            self.measurements += 1
            self.pending.clear()

    @torch.no_grad()
    def after_step(self) -> None:
        for p, (fresh, stored) in list(self.pending.items()):
            if stored is None:
                self.pending[p] = (fresh, self._m(p))


def run(cfg: Config, seed: int, a: argparse.Namespace, data: tuple) -> dict:
    """One training run; returns the held-out curve, flips (low-precision state) and sizes."""
    train, evals = data
    cls, kw, beta_c, beta_m = OPTIMIZERS[cfg.opt]
    model = build_llama(a.d_model, a.layers, a.heads, a.d_ff, seq_len=a.seq, seed=seed)
    params = list(model.parameters())
    rounding = "nearest" if cfg.rounding == "-" else cfg.rounding
    opt = cls(params, lr=cfg.lr, weight_decay=a.wd, seed=seed, backend=backend_for(cfg.state),
              state_rounding=rounding, fp8_min_numel=a.min_numel, **kw, **STATES[cfg.state])
    meter = None if cfg.state == "fp32" else FlipMeter(opt, params, beta_c, beta_m, a.flip_every)
    gen = torch.Generator().manual_seed(10_000 + seed)
    warmup = max(a.steps // 20, 1)
    curve = []
    t0 = time.time()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, cfg.lr, warmup)
        lm_loss(model, batch_at(train, a.batch, a.seq, gen)).backward()
        if meter:
            meter.before_step(step)
        opt.step()
        if meter:
            meter.after_step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            curve.append((step + 1, evaluate(model, evals)))
    lowp = sum(p.numel() for p in params if opt.state[p] and state_layout.format_of(
        *state_layout.stored(opt.rule(), opt.state[p], declaration.M)) != "fp32")
    return {"final": curve[-1][1], "curve": curve, "wall_s": time.time() - t0,
            "backend": ",".join(sorted(set(opt.last_step_backends))),
            "state_bpp": opt.state_bytes()["per_param"], "n_params": n_params(model), "lowp_params": lowp,
            "flips": None if meter is None else (meter.one_step, meter.accumulated, meter.elements,
                                                 meter.measurements)}


def configs(a: argparse.Namespace) -> list[Config]:
    out = []
    for o in a.optimizers:
        lr = a.lr_lion if o == "Lion" else a.lr_stosign
        for s in a.states:
            for r in (("-",) if s == "fp32" else a.roundings):
                out.append(Config(o, s, r, lr))
    return out


def header(a: argparse.Namespace, info: dict) -> list[str]:
    n_tok = a.steps * a.batch * a.seq
    return [
        "# Low-precision optimizer state: held-out loss of a small byte-level Llama (Python stdlib source)",
        provenance_line(),
        machine_banner() + " | one process",
        f"corpus: {info['root']}/*.py, {info['files']} files sorted, every 10th held out: train "
        f"{info['train_bytes']} bytes ({info['train_files']} files), held-out {info['heldout_bytes']} bytes "
        f"({info['heldout_files']} files); tokens = bytes (vocab 256)",
        f"model: LlamaForCausalLM d_model {a.d_model}, {a.layers} layers, {a.heads} heads, d_ff {a.d_ff}, "
        f"untied, seq {a.seq}",
        f"budget: {a.steps} steps x batch {a.batch} x seq {a.seq} = {n_tok} train tokens per run; lr: warmup "
        f"{max(a.steps // 20, 1)} steps, cosine to 10%; weight decay {a.wd} (decoupled)",
        f"Lion lr {'in the grid below' if a.lr_check else a.lr_lion}, betas {OPTIMIZERS['Lion'][1]['betas']}; "
        f"StoSignSGD lr {'in the grid below' if a.lr_check else a.lr_stosign}, beta "
        f"{OPTIMIZERS['StoSignSGD'][1]['beta']}, envelope per element (the default)",
        "state formats: fp8_e4m3 (fp32 scale per 256), mxfp8_e4m3 (E8M0 scale per 32), mxfp4 = fp4_e2m1 "
        "(E8M0 per 32), nvfp4-style = fp4_e2m1 + state_scale='e4m3' (E4M3 per 16 + fp32 tensor scale); "
        f"fp8_min_numel {a.min_numel}",
        f"held-out loss: mean over {a.eval_batches} fixed batches of {a.batch}x{a.seq} (nats/byte), every "
        f"{a.eval_every} steps; seeds {list(range(a.seeds))} (model init, data order, optimizer seed)",
        f"sign flips measured every {a.flip_every} steps", ""]


def report(results: dict[str, list[dict]], cfgs: list[Config], a: argparse.Namespace) -> list[str]:
    """The per-config table, every seed, flips and the 4-bit verdict."""
    out = []
    n = next(iter(results.values()))[0]["n_params"]
    shares = {c.state: results[c.label][0]["lowp_params"] for c in cfgs if c.state != "fp32"}
    out.append(f"parameters: {n}; share stored in the low-precision format (measured on each run's optimizer; "
               f"fp8_min_numel {a.min_numel}: smaller tensors of a block-scaled format, the norm weights, keep "
               "fp32): " + ", ".join(f"{s} {v} ({100 * v / n:.2f}%)" for s, v in shares.items()))
    out.append("")
    fp32_mean = {c.opt: statistics.mean(r["final"] for r in results[c.label])
                 for c in cfgs if c.state == "fp32"}
    out.append(f"{'optimizer':<10} {'state':<11} {'rounding':<10} {'backend':<7} {'state B/p':>9} "
               f"{'lowp %':>6} {'held-out mean':>13} {'std':>7} {'vs fp32':>8} {'flip 1-step':>11} "
               f"{'flip accum':>10} {'wall s':>7}")
    for c in cfgs:
        rs = results[c.label]
        v = [r["final"] for r in rs]
        mean = statistics.mean(v)
        sd = statistics.stdev(v) if len(v) > 1 else float("nan")
        rel = f"{100 * (mean - fp32_mean[c.opt]) / fp32_mean[c.opt]:+.2f}%" if c.opt in fp32_mean else "-"
        if rs[0]["flips"] is None:
            f1 = fa = "-"
        else:
            one, acc, el = (sum(r["flips"][i] for r in rs) for i in range(3))
            f1, fa = (f"{one / el:.3e}", f"{acc / el:.3e}") if el else ("n/a", "n/a")
        out.append(f"{c.opt:<10} {c.state:<11} {c.rounding:<10} {rs[0]['backend']:<7} "
                   f"{rs[0]['state_bpp']:>9.4f} {100 * rs[0]['lowp_params'] / rs[0]['n_params']:>6.2f} "
                   f"{mean:>13.4f} {sd:>7.4f} {rel:>8} {f1:>11} {fa:>10} {sum(r['wall_s'] for r in rs):>7.0f}")
    out += ["", "every seed's final held-out loss (seed 0, 1, ...), and the paired difference from the same "
            "optimizer's fp32 run of that seed:"]
    for c in cfgs:
        v = [r["final"] for r in results[c.label]]
        line = f"  {c.label:<34} " + " ".join(f"{x:.4f}" for x in v)
        ref = next((results[d.label] for d in cfgs if d.opt == c.opt and d.state == "fp32"), None)
        if ref is not None and c.state != "fp32":
            line += "   paired: " + " ".join(f"{x - r['final']:+.4f}" for x, r in zip(v, ref))
        out.append(line)
    flips = [(c, results[c.label]) for c in cfgs if results[c.label][0]["flips"]]
    if flips:
        meas = sum(r["flips"][3] for r in flips[0][1])
        el = sum(r["flips"][2] for r in flips[0][1])
        out += ["", f"sign flips: fraction of coordinates of low-precision tensors where the stored m gives "
                f"the next direction another sign than fp32 m ({meas} measurements per config over its seeds, "
                f"{el} element-observations); one-step: the fresh fp32 m vs its stored decode; accumulated: "
                "the stored m vs a shadow fp32 m carried from step 0 on the same gradients"]
    if fp32_mean:
        out += ["", f"4-bit state within {TOLERANCE_PCT:g}% of fp32 state on the mean held-out loss:"]
        for o in fp32_mean:
            rows = []
            for c in cfgs:
                if c.opt == o and c.state in FOUR_BIT:
                    mean = statistics.mean(r["final"] for r in results[c.label])
                    pct = 100 * (mean - fp32_mean[o]) / fp32_mean[o]
                    rows.append(f"{c.state} {c.rounding} {pct:+.2f}% "
                                f"{'WITHIN' if abs(pct) <= TOLERANCE_PCT else 'OUTSIDE'}")
            out.append(f"  {o}: " + ("; ".join(rows) if rows else "no 4-bit config run"))
    out += ["", "held-out loss curves (mean over seeds; step:loss):"]
    for c in cfgs:
        rs = results[c.label]
        pts = [(s, statistics.mean(r["curve"][i][1] for r in rs)) for i, (s, _) in enumerate(rs[0]["curve"])]
        out.append(f"  {c.label:<34} " + " ".join(f"{s}:{v:.3f}" for s, v in pts))
    return out


COLORS = {"fp32": "black", "bf16": "tab:blue", "fp8_e4m3": "tab:green", "mxfp8_e4m3": "tab:olive",
          "mxfp4": "tab:red", "nvfp4-style": "tab:purple"}


def plot(results: dict[str, list[dict]], cfgs: list[Config], a: argparse.Namespace, path: str,
         title: str) -> None:
    """Per optimizer: held-out curves (mean over seeds) and each config's difference from fp32."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    opts = list(dict.fromkeys(c.opt for c in cfgs))
    fig, axes = plt.subplots(2, len(opts), figsize=(7 * len(opts), 9), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for j, o in enumerate(opts):
        top, bot = axes[0][j], axes[1][j]
        mean_curve = {}
        for c in cfgs:
            if c.opt != o:
                continue
            rs = results[c.label]
            steps = [s for s, _ in rs[0]["curve"]]
            mean_curve[c] = (steps, [statistics.mean(r["curve"][i][1] for r in rs) for i in range(len(steps))])
        ref = next((v for c, v in mean_curve.items() if c.state == "fp32"), None)
        for c, (steps, ys) in mean_curve.items():
            style = dict(color=COLORS[c.state], linestyle="--" if c.rounding == "stochastic" else "-",
                         marker="o" if c.rounding != "stochastic" else "x", markersize=3,
                         linewidth=2 if c.state == "fp32" else 1.2,
                         label=f"{c.state}" + ("" if c.rounding == "-" else f", {c.rounding}"))
            top.plot(steps, ys, **style)
            if ref is not None:
                bot.plot(steps, [100 * (y - r) / r for y, r in zip(ys, ref[1])], **style)
        lo = min(min(ys) for _, ys in mean_curve.values())
        hi = max(ys[1] if len(ys) > 1 else ys[0] for _, ys in mean_curve.values())
        top.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        top.set_title(f"{o} (lr {cfgs[[c.opt for c in cfgs].index(o)].lr:g}), mean over {a.seeds} seed(s)")
        top.set_ylabel("held-out loss (nats/byte)")
        top.grid(alpha=0.3)
        top.legend(fontsize=8, ncol=2)
        bot.axhline(0, color="black", linewidth=0.8)
        for t in (TOLERANCE_PCT, -TOLERANCE_PCT):
            bot.axhline(t, color="gray", linewidth=0.8, linestyle=":")
            bot.annotate(f"{t:+g}%", (1.0, t), xycoords=("axes fraction", "data"), fontsize=7, color="gray",
                         ha="right", va="bottom")
        bot.set_ylabel("held-out loss vs fp32 state (%)")
        bot.set_xlabel("step")
        bot.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lr_check(a: argparse.Namespace, data: tuple) -> list[str]:
    """fp32-state runs of each optimizer at each lr of ``--lr-check`` on seed ``--lr-check-seed``."""
    out = [f"lr check: fp32 state, seed {a.lr_check_seed} (not one of the study's seeds), final held-out loss", ""]
    print("\n".join(out), flush=True)
    for o in a.optimizers:
        for lr in a.lr_check:
            r = run(Config(o, "fp32", "-", lr), a.lr_check_seed, a, data)
            out.append(f"  {o:<10} lr {lr:<8g} held-out {r['final']:.4f}  curve "
                       + " ".join(f"{s}:{v:.3f}" for s, v in r["curve"]) + f"  ({r['wall_s']:.0f} s)")
            print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: every config, 1 seed, 30 steps")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=256)
    ap.add_argument("--lr-lion", type=float, default=2e-3)
    ap.add_argument("--lr-stosign", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--min-numel", type=int, default=4096, help="fp8_min_numel")
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--flip-every", type=int, default=10)
    ap.add_argument("--optimizers", default="Lion,StoSignSGD")
    ap.add_argument("--states", default=",".join(STATES))
    ap.add_argument("--roundings", default="nearest,stochastic")
    ap.add_argument("--lr-check", default=None, help="comma list of lrs: only the fp32-state lr check")
    ap.add_argument("--lr-check-seed", type=int, default=100)
    ap.add_argument("--out", default=None, help="also write the report here")
    ap.add_argument("--plot", default=None, help="write the held-out curves here (PNG)")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.seeds, a.eval_batches, a.flip_every = 30, 1, 2, 5
    a.optimizers = a.optimizers.split(",")
    a.states = a.states.split(",")
    a.roundings = a.roundings.split(",")
    a.eval_every = max(a.steps // 10, 1)
    torch.set_num_threads(1)
    train, held, info = stdlib_corpus()
    data = (train, fixed_eval_batches(held, a.eval_batches, a.batch, a.seq))
    lines = header(a, info)
    print("\n".join(lines), flush=True)
    t0 = time.time()
    if a.lr_check:
        a.lr_check = [float(x) for x in a.lr_check.split(",")]
        lines += lr_check(a, data)
    else:
        cfgs = configs(a)
        results: dict[str, list[dict]] = {}
        for c in cfgs:
            for seed in range(a.seeds):
                r = run(c, seed, a, data)
                results.setdefault(c.label, []).append(r)
                print(f"  {c.label:<34} seed {seed} held-out {r['final']:.4f} backend {r['backend']} "
                      f"({r['wall_s']:.0f} s, {time.time() - t0:.0f} s total)", flush=True)
        body = report(results, cfgs, a)
        lines += body
        print("\n".join(body), flush=True)
    lines.append(f"total wall time {time.time() - t0:.0f} s")
    print(lines[-1], flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    if a.plot and not a.lr_check:
        plot(results, cfgs, a, a.plot, f"{a.d_model}-d {a.layers}-layer byte-level Llama, {a.steps} steps x "
             f"{a.batch}x{a.seq} bytes, mean over seeds {list(range(a.seeds))}; dashed: stochastic state rounding")


if __name__ == "__main__":
    main()
