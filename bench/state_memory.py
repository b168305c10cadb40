"""Optimizer-state memory per parameter, measured from the state tensors actually allocated,
for every signopt optimizer that keeps state and every ``state_dtype`` (the MX formats at their
default block of 32, and an MX block table); FP8 and MX block-size sweep
(bytes/param and how often quantising Lion's ``m`` flips the update sign, on real LM states).

Two independent measurements are printed for each row: ``opt.state_bytes()`` and a sum of the
untyped storage sizes of every tensor in ``opt.state`` (codes, fp32 scales, envelopes and the
int64 step counter all count). Bytes/param divides by all parameter elements, including small
tensors that keep fp32 state under ``fp8_min_numel``. The ``target`` column checks the rows that
have a budget (:data:`TARGETS`): ``opt.state_bytes()`` per parameter at most the figure given
(Lion with 4-bit state: 0.57). Rows run on ``backend="auto"`` (the state layout, and so every byte,
is the same on every backend).

    PYTHONPATH=. python bench/state_memory.py            # Llama-shaped ~1.9M list + block sweep
    PYTHONPATH=. python bench/state_memory.py --large    # also the ~64M-param list
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
import signopt  # noqa: E402
from signopt import declaration, state_format, state_layout  # noqa: E402
from signopt.casting import E4M3, E5M2  # noqa: E402

FORMATS = ("fp32", "bf16", "fp8_e4m3", "fp8_e5m2", "mxfp8_e4m3", "mxfp8_e5m2", "fp4_e2m1", "fp4_e2m1/e4m3")
"""state_dtype values measured; ``"fp4_e2m1/e4m3"`` is ``state_dtype="fp4_e2m1", state_scale="e4m3"``."""
BLOCKS = (32, 64, 128, 256, 512)
MX_BLOCKS = (32, 64, 128, 256)  # powers of two up to 256 (MX formats)


def block_for(fmt: str, block: int | None) -> int | None:
    """The block a table row uses: ``block`` for the fp32-scaled formats, the format's own
    default (``None``: 32) for the MX formats, whose blocks are powers of two up to 256."""
    return None if declaration.FORMATS[fmt.split("/")[0]].pow2_blocks else block
TARGETS = {("Lion", "fp8_e4m3"): 1.02, ("Signum", "fp8_e4m3"): 1.02, ("StoSignSGD/row", "fp8_e4m3"): 1.05,
           ("StoSignSGD/block", "fp8_e4m3"): 1.05, ("Lion", "fp4_e2m1"): 0.57, ("Lion", "fp4_e2m1/e4m3"): 0.57}
"""(optimizer, state) -> the largest ``opt.state_bytes()`` per parameter a row must show."""


def llama_shapes(vocab: int, d: int, layers: int, d_ff: int) -> list[tuple[int, ...]]:
    """Parameter shapes of an untied Llama: embeddings, per-layer attention/MLP/norms, head."""
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d, d), (d, d), (d, d), (d, d), (d_ff, d), (d_ff, d), (d, d_ff), (d,), (d,)]
    shapes += [(d,), (vocab, d)]
    return shapes


PARAM_LISTS = {
    "llama-1.9M (vocab 256, d 192, 4 layers, ff 512)": lambda: llama_shapes(256, 192, 4, 512),
    "llama-64M (vocab 16000, d 512, 14 layers, ff 1408)": lambda: llama_shapes(16000, 512, 14, 1408),
}


def optimizer_zoo() -> dict[str, tuple[type, dict]]:
    """Name -> (class, kwargs) for every optimizer configuration measured."""
    return {
        "Lion": (signopt.Lion, {}),
        "LionKappa/l2sq": (signopt.LionKappa, {"kappa": "l2sq"}),
        "Signum": (signopt.Signum, {}),
        "SignSGD": (signopt.SignSGD, {}),
        "StoSignSGD/element": (signopt.StoSignSGD, {"envelope": "element"}),
        "StoSignSGD/row": (signopt.StoSignSGD, {"envelope": "row"}),
        "StoSignSGD/block": (signopt.StoSignSGD, {"envelope": "block"}),
        "StoSignSGD/tensor": (signopt.StoSignSGD, {"envelope": "tensor"}),
        "SignConversion/adamw/row": (signopt.SignConversion, {"base": "adamw", "envelope": "row"}),
    }


def plain_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding ``t``'s data: ``t`` itself, or the inner tensors of a tensor
    subclass (``__tensor_flatten__``, e.g. torchao's quantised optimizer state), recursively."""
    if type(t) in (torch.Tensor, torch.nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [x for n in names for x in plain_tensors(getattr(t, n))]


def storage_bytes(opt: torch.optim.Optimizer) -> tuple[int, dict[str, int]]:
    """Independent count: untyped storage bytes of every state tensor (each storage once; a tensor
    subclass counts its inner tensors), and a breakdown by kind."""
    total, kinds = 0, {"codes/values": 0, "scales": 0, "envelope": 0, "step": 0}
    seen = set()
    for st in opt.state.values():
        for name, t in st.items():
            if not isinstance(t, torch.Tensor):
                continue
            b = 0
            for x in plain_tensors(t):
                ptr = x.untyped_storage().data_ptr()
                if ptr not in seen:
                    seen.add(ptr)
                    b += x.untyped_storage().nbytes()
            total += b
            kind = ("scales" if state_layout.is_scale_key(name) else "step" if name == state_layout.STEP_KEY
                    else "envelope" if name == declaration.G.name else "codes/values")
            kinds[kind] += b
    return total, kinds


def measure(shapes: list[tuple[int, ...]], cls: type, kw: dict, state_dtype: str, block: int | None,
            steps: int) -> dict:
    """Step ``cls`` on fresh params of ``shapes`` with random grads; return the byte counts."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    if "/" in state_dtype:
        state_dtype, scale = state_dtype.split("/")
        kw = {**kw, "state_scale": scale}
    opt = cls(params, lr=1e-4, state_dtype=state_dtype, state_block=block, seed=0, backend="auto", **kw)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    sb = opt.state_bytes()
    total, kinds = storage_bytes(opt)
    numel = sum(p.numel() for p in params)
    return {"numel": numel, "api_total": sb["total"], "api_per_param": sb["per_param"],
            "storage_total": total, "storage_per_param": total / numel, "kinds": kinds}


def table(label: str, shapes: list[tuple[int, ...]], steps: int, block: int,
          subset: tuple[str, ...] = ()) -> list[str]:
    """Optimizers x formats on one parameter list (with ``subset``: those optimizers, no E5M2,
    StoSignSGD E4M3 only)."""
    numel = sum(int(torch.Size(s).numel()) for s in shapes)
    out = [f"## {label}: {len(shapes)} tensors, {numel} parameters; {steps} step(s); FP8 block {block} "
           f"(MX formats: their default block, 32; fp4_e2m1/e4m3: 16), fp8_min_numel 4096", "",
           f"{'optimizer':<26} {'state':>13} {'state_bytes()':>14} {'B/param':>8} {'storage sum':>12} "
           f"{'B/param':>8} {'scales B/p':>10} {'env B/p':>8} {'target':>9}"]
    print("\n".join(out), flush=True)
    for name, (cls, kw) in optimizer_zoo().items():
        if subset and name not in subset:
            continue
        for fmt in FORMATS:
            if (name == "SignSGD" and fmt != "fp32") or \
                    (subset and fmt in ("fp8_e5m2", "mxfp8_e5m2")) or \
                    (subset and name.startswith("StoSignSGD") and fmt != "fp8_e4m3"):
                continue
            t0 = time.time()
            r = measure(shapes, cls, kw, fmt, block_for(fmt, block), steps)
            assert r["api_total"] == r["storage_total"], (name, fmt, r)
            target = TARGETS.get((name, fmt))
            verdict = "" if target is None else (f"<={target} {'OK' if r['api_per_param'] <= target else 'FAIL'}")
            out.append(f"{name:<26} {fmt:>13} {int(r['api_total']):>14} {r['api_per_param']:>8.4f} "
                       f"{r['storage_total']:>12} {r['storage_per_param']:>8.4f} "
                       f"{r['kinds']['scales'] / numel:>10.4f} {r['kinds']['envelope'] / numel:>8.4f} "
                       f"{verdict:>9}  ({time.time() - t0:.1f}s)")
            print(out[-1], flush=True)
    return out


def lm_states(steps: int, snap_at: tuple[int, ...]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """(fp32 m, next grad) pairs of every >=4096-element tensor, from fp32-state Lion training
    of the quality benchmark's byte-level Llama, snapshotted at ``snap_at``."""
    from bench.common_lm import batch_at, build_llama, lm_loss, stdlib_corpus
    train, _, _ = stdlib_corpus()
    model = build_llama(d_model=192, n_layers=4, n_heads=6, d_ff=512, seq_len=128, seed=0)
    opt = signopt.Lion(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, seed=0,
                       backend="torch")
    gen = torch.Generator().manual_seed(0)
    snaps, pending = [], None
    for step in range(1, steps + 1):
        loss = lm_loss(model, batch_at(train, 16, 128, gen))
        loss.backward()
        if pending is not None:
            snaps.append([(m, p.grad.detach().float().clone()) for p, m in pending])
            pending = None
        opt.step()
        if step in snap_at:
            pending = [(p, opt.state[p]["m"].clone()) for p in model.parameters() if p.numel() >= 4096]
        opt.zero_grad(set_to_none=True)
    return snaps


def block_sweep(snaps: list, beta1: float = 0.9) -> list[str]:
    """Sign flips of Lion's ``c`` and relative error of ``m`` after FP8 quantisation, per block."""
    out = ["## FP8 block-size sweep on real Lion momentum (byte-level Llama 1.9M, fp32-state Lion, "
           f"snapshots {len(snaps)}, {sum(m.numel() for m, _ in snaps[0])} elements each)",
           "flip = fraction of coordinates where sign(beta1*Q(m) + (1-beta1)*g) != sign(beta1*m + (1-beta1)*g), "
           "g = the next step's gradient; rel.err = ||Q(m)-m|| / ||m||; B/param for Lion on the 1.9M list", "",
           f"{'format':>9} {'rounding':>10} {'block':>6} {'flip rate':>10} {'rel.err':>9} {'Lion B/param':>12}"]
    print("\n".join(out), flush=True)
    shapes = PARAM_LISTS["llama-1.9M (vocab 256, d 192, 4 layers, ff 512)"]()
    gen = torch.Generator().manual_seed(7)
    for fmt_name, fmt in (("fp8_e4m3", E4M3), ("fp8_e5m2", E5M2), ("mxfp8_e4m3", E4M3), ("mxfp8_e5m2", E5M2)):
        scale_type = declaration.FORMATS[fmt_name].scale
        for rounding in ("nearest", "stochastic"):
            for block in (MX_BLOCKS if scale_type == "e8m0" else BLOCKS):
                if rounding == "stochastic" and block not in (32, 256):
                    continue
                flips = n = 0
                err2 = ref2 = 0.0
                for snap in snaps:
                    for m, g in snap:
                        word = (torch.randint(0, 2**32, m.shape, generator=gen, dtype=torch.int64)
                                if rounding == "stochastic" else None)
                        codes, scale = state_format.fp8_encode(m, fmt, block, word, scale_type)
                        q = state_format.fp8_decode(codes, scale, block)
                        c = m * beta1 + g * (1 - beta1)
                        cq = q * beta1 + g * (1 - beta1)
                        flips += int((torch.sign(c) != torch.sign(cq)).sum())
                        n += m.numel()
                        err2 += float(((q - m) ** 2).sum())
                        ref2 += float((m ** 2).sum())
                bpp = measure(shapes, signopt.Lion, {}, fmt_name, block, 1)["storage_per_param"]
                out.append(f"{fmt_name:>9} {rounding:>10} {block:>6} {flips / n:>10.3e} "
                           f"{(err2 / ref2) ** 0.5:>9.3e} {bpp:>12.4f}")
                print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--large", action="store_true",
                    help="also the ~64M-parameter list (1 step; Lion/Signum all formats, StoSignSGD E4M3)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the block-size / sign-flip sweep")
    ap.add_argument("--sweep-steps", type=int, default=150)
    ap.add_argument("--out", default=None, help="also write the report here (rewritten after each section)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from bench.common_lm import machine_banner
    from bench.provenance import provenance_line
    lines = ["# Optimizer-state bytes per parameter (measured from allocated state tensors)",
             provenance_line(), machine_banner(), ""]
    print("\n".join(lines), flush=True)

    def save() -> None:
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")

    small = "llama-1.9M (vocab 256, d 192, 4 layers, ff 512)"
    lines += table(small, PARAM_LISTS[small](), 3, 256) + [""]
    save()
    shapes = PARAM_LISTS[small]()
    zoo = optimizer_zoo()
    names = ("Lion", "Signum", "StoSignSGD/row", "StoSignSGD/block")
    for title, fmt, blocks, note in (
            ("E4M3 state vs FP8 block size", "fp8_e4m3", BLOCKS,
             "(StoSignSGD/block: envelope_block 256 whatever the FP8 block)"),
            ("MXFP8 E4M3 state (E8M0 scales) vs MX block size", "mxfp8_e4m3", MX_BLOCKS, None)):
        lines += [f"## Lion / Signum / StoSignSGD with {title} (1.9M list)", "",
                  f"{'block':>6} " + " ".join(f"{n:>18}" for n in names)]
        print("\n".join(lines[-3:]), flush=True)
        for block in blocks:
            row = [measure(shapes, *zoo[n], fmt, block, 1)["storage_per_param"] for n in names]
            lines.append(f"{block:>6} " + " ".join(f"{v:>18.4f}" for v in row))
            print(lines[-1], flush=True)
        if note:
            lines.append(note)
        lines.append("")
    save()
    if not args.no_sweep:
        snaps = lm_states(args.sweep_steps, (args.sweep_steps // 3, 2 * args.sweep_steps // 3,
                                             args.sweep_steps - 1))
        lines += block_sweep(snaps) + [""]
        save()
    if args.large:
        large = "llama-64M (vocab 16000, d 512, 14 layers, ff 1408)"
        lines += table(large, PARAM_LISTS[large](), 1, 256,
                       ("Lion", "Signum", "StoSignSGD/row", "StoSignSGD/block")) + [""]
        save()


if __name__ == "__main__":
    main()
