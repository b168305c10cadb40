"""GPU targets of the Triton backend, measured with CUDA events.

    python bench/triton_gpu.py [--repeats N] [--skip-1b]

1. Bandwidth at 1B fp32 parameters: a Lion step moves 20 bytes/parameter (read p, g, m; write p,
   m); its effective bandwidth against ``dst.copy_(src)`` (8 bytes/element). Target >= 90%.
2. Triton vs the CUDA build of the cpp backend (same rule, same list). Target: within 10%.
3. GPT-2-size parameter list (148 tensors, 124M parameters): step time of signopt's Triton
   Lion against lion-pytorch's Triton Lion (one launch per parameter). Target >= 3x.

Every number printed is measured in this run; nothing is assumed. Without a CUDA device the
script says so and exits 0. Rows for ``bench/step.py``-style tables: :func:`triton_rows`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
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


def triton_rows() -> list[dict]:
    """Rows for a step-time table: every family on the Triton backend, fp32 and FP8 state."""
    rows = []
    for name, cls, kw, n_states in [("SignSGD", signopt.SignSGD, {}, 0), ("Signum", signopt.Signum, {}, 1),
                                    ("Lion", signopt.Lion, {}, 1),
                                    ("LionKappa-l2", signopt.LionKappa, {"kappa": "l2"}, 1),
                                    ("StoSignSGD", signopt.StoSignSGD, {}, 2),
                                    ("SignConversion-adamw", signopt.SignConversion, {"base": "adamw"}, 3)]:
        for fmt in (["fp32"] if n_states == 0 else ["fp32", "bf16", "fp8_e4m3"]):
            rows.append(dict(kind="signopt", name=name, cls=cls, kw=kw, backend="triton", state=fmt,
                             pdtype="fp32", n_states=n_states))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--skip-1b", action="store_true", help="skip the 1B-parameter bandwidth case")
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
    except Exception as exc:  # noqa: BLE001
        print(f"  lion-pytorch Triton Lion not measured: {exc.__class__.__name__}: {exc}")
    if not cpp_why:
        t_cpp = step_time(lambda ps: signopt.Lion(ps, lr=1e-4, weight_decay=0.1, backend="cpp"), gpt2, args.repeats)
        print(f"  cpp (CUDA) Lion {t_cpp * 1e3:.3f} ms -> Triton/CUDA time ratio {t_tri / t_cpp:.3f} (target <= 1.10)")
    for fmt in ("bf16", "fp8_e4m3"):
        t = step_time(lambda ps: signopt.Lion(ps, lr=1e-4, state_dtype=fmt, backend="triton"), gpt2, args.repeats)
        print(f"  signopt Triton Lion, {fmt} state: {t * 1e3:.3f} ms")
    for row in triton_rows():
        kw = dict(row["kw"])
        if row["n_states"]:
            kw["state_dtype"] = row["state"]
        t = step_time(lambda ps: row["cls"](ps, lr=1e-4, backend="triton", **kw), gpt2, args.repeats)
        print(f"  {row['name']:22s} triton state {row['state']:8s} {t * 1e3:9.3f} ms")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
