"""GPU targets of the Triton backend, measured with CUDA events.

    python bench/triton_gpu.py [--repeats N] [--skip-1b]

0. Bit identity: every rule of the parity harness (``tests/test_parity.py``), fp32 parameters
   (bf16 too for a few), E4M3 state, cautious, weight decay, three steps with the same seed,
   Triton on CUDA against the torch reference on CPU: bitwise for the rules the contract marks
   exact, the max difference for the others.
1. Bandwidth at 1B fp32 parameters: a Lion step moves 20 bytes/parameter (read p, g, m; write p,
   m); its effective bandwidth against ``dst.copy_(src)`` (8 bytes/element). Target >= 90%.
2. Triton vs the CUDA build of the cpp backend (same rule, same list). Target: within 10%.
3. GPT-2-size parameter list (148 tensors, 124M parameters): step time of signopt's Triton
   Lion against lion-pytorch's Triton Lion (one launch per parameter). Target >= 3x. Also what
   ``backend="auto"`` picks for that list (the measured auto table; its one log line is shown).

Every number printed is measured in this run; nothing is assumed. Without a CUDA device the
script says so and exits 0. Every family x state dtype on the Triton backend, beside cpp and
the peers: ``python bench/step.py --device cuda``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import signopt  # noqa: E402
from signopt import backends as backend_registry  # noqa: E402
from step_gpu import cuda_time  # noqa: E402  (bench/ is on sys.path when run as a script)


def gpt2_shapes(vocab: int = 50257, ctx: int = 1024, d: int = 768, layers: int = 12) -> list[tuple[int, ...]]:
    """GPT-2 small: wte, wpe, 12 x (ln1, attn qkv, attn proj, ln2, fc, proj with biases), ln_f."""
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,),
                   (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def make_params(shapes, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = []
    for s in shapes:
        p = torch.randn(s, device="cuda", generator=gen, dtype=torch.float32).mul_(0.02).to(dtype)
        p.grad = torch.randn(s, device="cuda", generator=gen, dtype=torch.float32).mul_(0.01).to(dtype)
        params.append(p)
    return params


def step_time(make_opt, params, repeats: int) -> float:
    opt = make_opt(params)
    return cuda_time(opt.step, repeats)[1]


def available(name: str) -> str | None:
    try:
        backend = backend_registry.load(name)
    except backend_registry.BackendUnavailable as exc:
        return str(exc)
    probe = [torch.zeros(8, device="cuda")]
    return backend.unsupported(signopt.Lion(probe, backend="torch").rule(), probe)


BF16_IDENTITY = ("signum", "lion", "stosign_element")


def identity() -> int:
    """Triton on CUDA vs the torch reference on CPU for every parity-harness rule; returns the
    number of exact rules that differ."""
    import test_parity as tp
    bad = 0
    for rule, (cls, kw, tol) in tp.RULES.items():
        # bf16 parameters for a few rules only: each (rule, dtype) compiles its own kernels
        for pdt in (torch.float32,) + ((torch.bfloat16,) if rule in BF16_IDENTITY else ()):
            gen = torch.Generator().manual_seed(0)
            cpu = [torch.randn(s, generator=gen).to(pdt) for s in [(7, 31), (4099,), (3, 1000), (0, 4)]]
            gpu = [p.cuda() for p in cpu]
            opts = dict(lr=1e-2, seed=1, cautious=True, weight_decay=0.1, state_dtype="fp8_e4m3",
                        fp8_min_numel=0, state_block=32, **kw)
            try:
                o_ref = cls(cpu, backend="torch", **opts)
                o_tri = cls(gpu, backend="triton", **opts)
                for _ in range(3):
                    for p, q in zip(cpu, gpu):
                        p.grad = torch.randn(p.shape, generator=gen).to(pdt)
                        q.grad = p.grad.cuda()
                    o_ref.step()
                    o_tri.step()
                torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"Triton(CUDA) vs torch(CPU) {rule} {pdt}: FAILED {type(exc).__name__}: {exc}")
                bad += tol == tp.EXACT
                continue
            same = all(torch.equal(p, q.cpu()) for p, q in zip(cpu, gpu))
            worst = max((float((p.float() - q.cpu().float()).abs().max()) if p.numel() else 0.0)
                        for p, q in zip(cpu, gpu))
            if tol == tp.EXACT:
                bad += not same
                verdict = "bit-identical" if same else f"DIFFERENT (max |diff| {worst:.3g})"
            else:
                verdict = "bit-identical" if same else f"max |diff| {worst:.3g} (ulp rule)"
            print(f"Triton(CUDA) vs torch(CPU) {rule} {str(pdt)[6:]} E4M3 state, cautious: {verdict}")
    print(f"exact rules differing: {bad}")
    return bad


def auto_choice(params: list[torch.Tensor]) -> None:
    """What backend='auto' picks for ``params`` (measured at construction, or from the table)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("signopt").setLevel(logging.INFO)
    opt = signopt.Lion(params, lr=1e-4)
    print(f"  backend='auto' on this list: {opt.backends}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--skip-1b", action="store_true", help="skip the 1B-parameter bandwidth case")
    ap.add_argument("--skip-identity", action="store_true", help="skip the Triton-vs-reference bit check")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("triton_gpu: no CUDA device on this machine; the Triton GPU targets (bandwidth at 1B "
              "params, vs the CUDA backend, vs lion-pytorch) were NOT measured")
        return 0
    why = available("triton")
    if why:
        print(f"triton_gpu: triton backend unavailable: {why}")
        return 1
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {__import__('triton').__version__}")
    cpp_why = available("cpp")
    if cpp_why:
        print(f"cpp backend on CUDA unavailable ({cpp_why}): Triton-vs-CUDA rows skipped")

    # 0. bit identity against the reference
    bad = 0 if args.skip_identity else identity()

    # 3. GPT-2-size list
    gpt2 = make_params(gpt2_shapes())
    n = sum(p.numel() for p in gpt2)
    t_tri = step_time(lambda ps: signopt.Lion(ps, lr=1e-4, weight_decay=0.1, backend="triton"), gpt2, args.repeats)
    print(f"GPT-2 list ({len(gpt2)} tensors, {n / 1e6:.1f}M params): signopt Triton Lion "
          f"{t_tri * 1e3:.3f} ms ({20 * n / t_tri / 1e9:.0f} GB/s effective)")
    try:
        from lion_pytorch import Lion as LionPT
        t_peer = step_time(lambda ps: LionPT(ps, lr=1e-4, weight_decay=0.1, use_triton=True), gpt2, args.repeats)
        print(f"  lion-pytorch Triton Lion {t_peer * 1e3:.3f} ms -> speed-up {t_peer / t_tri:.2f}x (target >= 3x)")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - lion_pytorch.triton calls exit() without triton
        print(f"  lion-pytorch Triton Lion not measured: {exc.__class__.__name__}: {exc}")
    if not cpp_why:
        t_cpp = step_time(lambda ps: signopt.Lion(ps, lr=1e-4, weight_decay=0.1, backend="cpp"), gpt2, args.repeats)
        print(f"  cpp (CUDA) Lion {t_cpp * 1e3:.3f} ms -> Triton/CUDA time ratio {t_tri / t_cpp:.3f} (target <= 1.10)")
    for fmt in ("bf16", "fp8_e4m3"):
        t = step_time(lambda ps: signopt.Lion(ps, lr=1e-4, state_dtype=fmt, backend="triton"), gpt2, args.repeats)
        print(f"  signopt Triton Lion, {fmt} state: {t * 1e3:.3f} ms")
    auto_choice(gpt2)
    del gpt2
    torch.cuda.empty_cache()

    # 1./2. bandwidth at 1B parameters
    if not args.skip_1b:
        shapes = [(50_000, 20_000)]  # 1.0e9 fp32 elements: p, g, m and a copy target = 16 GB
        big = make_params(shapes)
        nb = big[0].numel()
        dst = torch.empty_like(big[0])
        t_copy = cuda_time(lambda: dst.copy_(big[0]), args.repeats)[1]
        del dst
        copy_bw = 8 * nb / t_copy
        t_lion = step_time(lambda ps: signopt.Lion(ps, lr=1e-4, backend="triton"), big, args.repeats)
        lion_bw = 20 * nb / t_lion
        print(f"1B params: D2D copy {copy_bw / 1e9:.0f} GB/s; Triton Lion {t_lion * 1e3:.2f} ms = "
              f"{lion_bw / 1e9:.0f} GB/s = {100 * lion_bw / copy_bw:.1f}% of copy (target >= 90%)")
        if not cpp_why:
            t_cpp = step_time(lambda ps: signopt.Lion(ps, lr=1e-4, backend="cpp"), big, args.repeats)
            print(f"  cpp (CUDA) Lion {t_cpp * 1e3:.2f} ms -> Triton/CUDA {t_lion / t_cpp:.3f}")
        launch_sweep(big, copy_bw, args.repeats)
    return 1 if bad else 0


def launch_sweep(big: list[torch.Tensor], copy_bw: float, repeats: int) -> None:
    """Triton Lion fp32 at 1B parameters for other (elements per program, warps) of the update
    pass than ``kernels/launch.py``'s fixed ``CONFIG`` (restored afterwards)."""
    import dataclasses
    launch = backend_registry.load("triton")._launch
    fixed = launch.CONFIG
    nb = big[0].numel()
    try:
        for block, warps in [(2048, 4), (4096, 8), (8192, 8), (4096, 4)]:
            launch.CONFIG = dataclasses.replace(fixed, update_block=block, update_warps=warps)
            t = step_time(lambda ps: signopt.Lion(ps, lr=1e-4, backend="triton"), big, repeats)
            print(f"  launch sweep: update_block {block}, {warps} warps: Triton Lion {t * 1e3:.2f} ms = "
                  f"{100 * 20 * nb / t / copy_bw:.1f}% of copy")
    finally:
        launch.CONFIG = fixed


if __name__ == "__main__":
    sys.exit(main())
