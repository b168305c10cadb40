"""GPU rows of the step benchmark (run by bench/gpu_check.sh; needs a CUDA build of the cpp backend).

1. Bandwidth at 1B parameters: Lion fp32 (20 B/param), bf16/bf16, fp32/E4M3 and bf16 params
   with E4M3 state against device-to-device copy bandwidth (``b.copy_(a)``, 8 B/element), CUDA events,
   min/median over repeats.
2. Kernel launches of one Lion step on a GPT-2-size list (one apply launch per group).
3. CPU-vs-GPU bit identity of the exact rules (params and state after three steps).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import signopt  # noqa: E402
from bench.provenance import provenance_line  # noqa: E402


def cuda_time(fn, repeats: int = 10) -> tuple[float, float]:
    """Min and median seconds of ``fn`` over ``repeats`` CUDA-event-timed calls (after 3
    warm-ups)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return min(times), statistics.median(times)


def bandwidth(n: int) -> None:
    x = torch.empty(n, device="cuda")
    y = torch.empty(n, device="cuda")
    copy_min, copy_med = cuda_time(lambda: y.copy_(x))
    copy_bw = 8 * n / copy_min
    print(f"D2D copy: {n / 1e9:.2f}G fp32 elements, {copy_bw / 1e9:.0f} GB/s (min {copy_min * 1e3:.2f} ms, "
          f"median {copy_med * 1e3:.2f} ms)")
    del x, y
    fp8 = 2 * (1 + 4 / 256)  # m codes and block scales, read and written
    for label, pdt, state, bpp in [("Lion fp32/fp32", torch.float32, "fp32", 20.0),
                                   ("Lion bf16/bf16", torch.bfloat16, "bf16", 10.0),
                                   ("Lion fp32/E4M3", torch.float32, "fp8_e4m3", 3 * 4 + fp8),
                                   ("Lion bf16/E4M3", torch.bfloat16, "fp8_e4m3", 3 * 2 + fp8)]:
        p = torch.zeros(n, device="cuda", dtype=pdt)
        p.grad = torch.randn(n, device="cuda", dtype=pdt)
        opt = signopt.Lion([p], lr=1e-4, backend="cpp", state_dtype=state)
        opt.step()
        tmin, tmed = cuda_time(opt.step)
        bw = bpp * n / tmin
        print(f"{label}: {tmin * 1e3:.2f} ms min, {tmed * 1e3:.2f} ms median, {bw / 1e9:.0f} GB/s = "
              f"{100 * bw / copy_bw:.1f}% of D2D copy{' (target >= 90%)' if state == 'fp32' else ''}")
        del p, opt
        torch.cuda.empty_cache()


def launches() -> None:
    from test_cpp_cuda import gpt2_like, lion_step_activities
    params = gpt2_like()
    names = lion_step_activities(params)
    print(f"GPT-2-size list ({len(params)} tensors, {sum(p.numel() for p in params) / 1e6:.0f}M params): "
          f"{len(names)} GPU activities in one Lion step, {sum('apply_kernel' in n for n in names)} apply launch(es)")


def identity() -> int:
    import test_parity as tp
    bad = 0
    for rule, (cls, kw, tol) in tp.RULES.items():
        if tol != tp.EXACT:
            continue
        gen = torch.Generator().manual_seed(0)
        cpu = [torch.randn(s, generator=gen) for s in [(7, 31), (4099,), (3, 1000)]]
        gpu = [p.cuda() for p in cpu]
        o1 = cls(cpu, lr=1e-2, backend="cpp", seed=1, cautious=True, weight_decay=0.1, **kw)
        o2 = cls(gpu, lr=1e-2, backend="cpp", seed=1, cautious=True, weight_decay=0.1, **kw)
        for _ in range(3):
            for p, q in zip(cpu, gpu):
                p.grad = torch.randn(p.shape, generator=gen)
                q.grad = p.grad.cuda()
            o1.step()
            o2.step()
        same = all(torch.equal(p, q.cpu()) for p, q in zip(cpu, gpu))
        bad += not same
        print(f"CPU vs GPU {rule}: {'bit-identical' if same else 'DIFFERENT'}")
    print(f"exact rules differing: {bad}")
    return bad


def ncu_target(n: int = 2**28) -> None:
    """Two Lion steps each for cpp fp32, cpp bf16/E4M3 and triton fp32 on one ``n``-element
    tensor: what ``ncu --kernel-name regex:apply|lion`` profiles (bench/gpu_check.sh)."""
    for backend, pdt, state in [("cpp", torch.float32, "fp32"), ("cpp", torch.bfloat16, "fp8_e4m3"),
                                ("triton", torch.float32, "fp32")]:
        p = torch.zeros(n, device="cuda", dtype=pdt)
        p.grad = torch.randn(n, device="cuda", dtype=pdt)
        opt = signopt.Lion([p], lr=1e-4, backend=backend, state_dtype=state)
        for _ in range(2):
            opt.step()
        torch.cuda.synchronize()
        print(f"ncu target: {backend} Lion {pdt} params, {state} state, {n} elements")
        del p, opt


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU rows need one (bench/gpu_check.sh)")
        return 0
    if "--ncu" in sys.argv:
        ncu_target()
        return 0
    print(provenance_line("cuda"))
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    from signopt import backends as backend_registry
    try:
        backend = backend_registry.load("cpp")  # builds the extension here if it is not built yet
    except backend_registry.BackendUnavailable as exc:
        print(f"cpp backend unavailable: {exc}")
        return 1
    if not backend.has_cuda:
        print("the signopt extension was built without CUDA kernels (SIGNOPT_CUDA=0, no nvcc, or no "
              "CUDA torch): nothing to measure")
        return 1
    bad = identity()
    launches()
    bandwidth(10**9 if "--quick" not in sys.argv else 10**8)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
