"""Ahead-of-time compilation of the kernels for a GPU target, without a GPU.

``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))``
runs the whole Triton -> LLVM -> PTX pipeline on the CPU. :func:`compile_variants` does it for
a representative variant of every kernel and rule family (the constexprs come from the same
:mod:`.launch` helpers the runtime uses), so the PTX of the rules that must be bit-exact can be
checked: no ``fma.rn.f32`` (no contraction), no approximate division or square root, no
flush-to-zero fp32 arithmetic.

This must run with ``TRITON_INTERPRET`` unset: under the interpreter ``@triton.jit`` returns
interpreted functions that cannot be compiled (``python -m`` it in a clean environment).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from signopt.rule import UpdateRule

from . import launch, passes

UPDATE_SIG = {"tab_ptr": "*i64", "ftab_ptr": "*fp32", "blk_ptr": "*i32", "sc_ptr": "*fp32",
              "sc64_ptr": "*fp64", "inv_scale_ptr": "*fp32", "found_inf_ptr": "*fp32",
              "sega_ptr": "*fp32", "segb_ptr": "*fp32", "tso_ptr": "*fp32", "count_ptr": "*i64",
              "stats_ptr": "*fp64"}
CHUNKS_SIG = {"tab_ptr": "*i64", "ftab_ptr": "*fp32", "unit_ptr": "*i32", "rtab_ptr": "*i64",
              "sc_ptr": "*fp32", "sc64_ptr": "*fp64", "inv_scale_ptr": "*fp32", "sega_ptr": "*fp32",
              "partial_ptr": "*fp64", "n_units": "i64"}
FINALIZE_SIG = {"tab_ptr": "*i64", "ftab_ptr": "*fp32", "seg_ptr": "*i32", "rtab_ptr": "*i64",
                "sc_ptr": "*fp32", "sc64_ptr": "*fp64", "found_inf_ptr": "*fp32",
                "partial_ptr": "*fp64", "out_ptr": "*fp32", "n_segs": "i64"}

# the reduction stage of a pass named ``chunks_<stage>`` / ``finalize_<stage>``
PASS_WANTS = {"a": passes.WANT_STAGE_A, "count": passes.WANT_CAUTIOUS_COUNT, "ts": passes.WANT_STATE_ABSMAX}

# PTX that an exact rule must not contain: contracted multiply-adds, approximate division /
# reciprocal / square root of fp32, and fp32 arithmetic flushing subnormals to zero.
FORBIDDEN = {
    "fma.rn.f32": re.compile(r"\bfma\.rn(\.ftz)?(\.sat)?\.f32\b"),
    "approximate division": re.compile(r"\bdiv\.(approx|full)(\.ftz)?\.f32\b"),
    "approximate reciprocal": re.compile(r"\brcp\.approx(\.ftz)?\.f32\b"),
    "approximate sqrt": re.compile(r"\bsqrt\.approx(\.ftz)?\.f32\b"),
    "flush-to-zero fp32": re.compile(r"\b(add|sub|mul|div|sqrt|fma|min|max|setp\.\w+)\.(\w+\.)?ftz\b[.\w]*\.f32\b"),
}


@dataclass(frozen=True)
class Variant:
    """One kernel specialisation to compile."""

    name: str
    rule: UpdateRule
    p_dtype: torch.dtype = torch.float32
    state_kind: str = "fp32"
    passes: tuple[str, ...] = ("update",)
    exact: bool = True
    extra: dict = field(default_factory=dict, compare=False)


def variants() -> list[Variant]:
    """A variant per rule family, kappa, stochastic base/envelope, storage kind and option."""
    R = UpdateRule
    return [
        Variant("sign", R("sign", maximize=True, wd_mode="l2")),
        Variant("signum-bf16state", R("signum", state_dtype="bf16"), state_kind="bf16"),
        Variant("lion-cautious-scaler", R("lion", cautious=True),
                passes=("update", "chunks_count", "finalize_count"),
                extra=dict(has_inv_scale=True, has_found_inf=True)),
        Variant("lion-bf16param-sr", R("lion", param_rounding="stochastic"), p_dtype=torch.bfloat16),
        Variant("lion-fp16param-sr", R("lion", param_rounding="stochastic"), p_dtype=torch.float16),
        Variant("lion-e4m3-sr", R("lion", state_dtype="fp8_e4m3", state_rounding="stochastic"),
                state_kind="fp8_e4m3"),
        Variant("lion-e5m2", R("lion", state_dtype="fp8_e5m2"), state_kind="fp8_e5m2"),
        Variant("kappa-l2sq", R("lion", kappa="l2sq")),
        Variant("kappa-huber", R("lion", kappa="huber")),
        Variant("kappa-l2", R("lion", kappa="l2"), passes=("update", "chunks_a", "finalize_a")),
        Variant("kappa-row_l2", R("lion", kappa="row_l2"), passes=("update", "chunks_a", "finalize_a")),
        Variant("kappa-lp", R("lion", kappa="lp"), passes=("update", "chunks_a", "finalize_a"),
                exact=False),
        Variant("stochastic-adamw-element", R("stochastic", base="adamw")),
        Variant("stochastic-momentum-row", R("stochastic", base="momentum", envelope="row"),
                passes=("update", "chunks_a", "finalize_a")),
        Variant("stochastic-lion-block-grad", R("stochastic", base="lion", envelope="block",
                                                envelope_source="grad"),
                passes=("update", "chunks_a", "finalize_a"), extra=dict(segment=256)),
        Variant("stochastic-sgd-tensor", R("stochastic", base="sgd", envelope="tensor")),
        Variant("stochastic-adamw-nvfp4-sr", R("stochastic", base="adamw", state_dtype="fp4_e2m1_e4m3",
                                               state_block=16, state_rounding="stochastic"),
                state_kind="fp4_e2m1_e4m3", passes=("update", "chunks_ts", "finalize_ts"),
                extra=dict(has_found_inf=True)),
    ]


def _compile(fn, signature: dict, constexprs: dict, target, num_warps: int) -> str:
    import triton
    from triton.compiler import ASTSource

    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    src = ASTSource(fn, sig, constexprs)
    compiled = triton.compile(src, target=target,
                              options={"num_warps": num_warps, "enable_fp_fusion": False})
    return compiled.asm["ptx"]


def compile_variant(v: Variant, target=None) -> dict[str, str]:
    """PTX of each pass of ``v`` for ``target`` (default sm_90)."""
    from triton.backends.compiler import GPUTarget

    target = target or GPUTarget("cuda", 90, 32)
    cfg = launch.CONFIG
    flags = launch.rule_flags(v.rule, v.p_dtype, v.p_dtype, v.state_kind, has_l2=v.rule.wd_mode == "l2",
                              has_inv_scale=v.extra.get("has_inv_scale", False))
    found_inf = v.extra.get("has_found_inf", False)
    sblk = launch.state_sblk(v.rule, v.state_kind)
    out = {}
    for p in v.passes:
        if p == "update":
            ce = launch.update_constexprs(v.rule, flags, v.state_kind, found_inf, cfg)
            out[p] = _compile(passes.update_kernel, UPDATE_SIG, ce, target, cfg.update_warps)
            continue
        want = int(PASS_WANTS[p.rsplit("_", 1)[1]])
        if p.startswith("chunks"):
            units, rblock = launch.reduce_tile(v.extra.get("segment", cfg.reduce_block), cfg)
            ce = launch.reduce_constexprs(flags, want, sblk, units, rblock)
            out[p] = _compile(passes.reduce_chunks_kernel, CHUNKS_SIG, ce, target, cfg.reduce_warps)
        else:
            ce = launch.finalize_constexprs(flags, want, found_inf, cfg)
            out[p] = _compile(passes.reduce_finalize_kernel, FINALIZE_SIG, ce, target, cfg.reduce_warps)
    return out


def forbidden_in(ptx: str) -> list[str]:
    """Names of the :data:`FORBIDDEN` patterns found in ``ptx``."""
    return [name for name, pattern in FORBIDDEN.items() if pattern.search(ptx)]


def main() -> None:
    """Compile every variant for sm_90 and print one JSON line per pass."""
    import json
    import time

    for v in variants():
        t0 = time.perf_counter()
        ptx = compile_variant(v)
        for p, text in ptx.items():
            print(json.dumps({"variant": v.name, "pass": p, "exact": v.exact,
                              "forbidden": forbidden_in(text), "ptx_bytes": len(text),
                              "seconds": round(time.perf_counter() - t0, 2)}), flush=True)


if __name__ == "__main__":
    main()
