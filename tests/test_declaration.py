"""signopt.declaration is the one table of rules and formats: check it against what it
describes (torch's dtypes, the rule options, the scalars) so that no other copy can drift."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import signopt
from signopt import declaration as D
from signopt import rule as R
from signopt import state_layout
from signopt.scalars import GroupScalars


@pytest.mark.parametrize("fmt", [f for f in D.FORMATS.values() if not f.packed],
                         ids=[n for n, f in D.FORMATS.items() if not f.packed])
def test_formats_match_torch_dtypes(fmt):
    fi = torch.finfo(fmt.dtype)
    assert fmt.bits == fi.bits
    assert fmt.max_finite == fi.max
    assert fmt.emin == math.log2(fi.tiny)  # smallest normal = 2**emin
    assert 2.0 ** -fmt.mantissa_bits == fi.eps


def test_packed_formats_are_e2m1():
    """The packed 4-bit formats (no torch dtype) are OCP E2M1: 0.5 .. 6 with one mantissa bit,
    stored as uint8 bytes of two codes."""
    for f in D.FORMATS.values():
        if f.packed:
            assert (f.bits, f.mantissa_bits, f.emin, f.max_finite, f.emax) == (4, 1, 0, 6.0, 2)
            assert f.dtype == torch.uint8 and f.block_scaled and f.min_block == 2


def test_ids_are_dense_and_unique():
    for table in (D.FAMILIES, D.KAPPAS, D.BASES, D.ENVELOPES):
        assert sorted(table.values()) == list(range(len(table)))
    assert sorted(f.id for f in D.FORMATS.values()) == list(range(len(D.FORMATS)))
    assert sorted(k.id for k in D.KINDS) == list(range(len(D.KINDS)))
    assert sorted(D.RANDOM_PURPOSES.values()) == list(range(len(D.RANDOM_PURPOSES)))


def test_every_rule_choice_has_exactly_one_kind():
    cases = [("sign", {}), ("signum", {})]
    cases += [("lion", {"kappa": k}) for k in D.KAPPAS]
    cases += [("stochastic", {"base": b}) for b in D.BASES]
    seen = []
    for family, kw in cases:
        matches = [k for k in D.KINDS if k.family == family
                   and (not k.variants or set(kw.values()) <= set(k.variants))]
        assert len(matches) == 1, (family, kw, matches)
        seen.append(D.kind(family, **kw))
    assert set(seen) == set(D.KINDS)
    with pytest.raises(ValueError, match="kappa 'callable' has no fused kernel"):
        D.kind("lion", kappa="callable")


def test_rule_options_come_from_the_declaration():
    assert R.FAMILIES == tuple(D.FAMILIES) == tuple(cls.family for cls in (
        signopt.SignSGD, signopt.Signum, signopt.Lion, signopt.SignConversion))
    assert R.STATE_DTYPES == tuple(n for n, f in D.FORMATS.items() if f.state and f.option_of is None)
    assert all(D.FORMATS[f.option_of[0]].state and f.option_of[1] in D.FORMATS[f.option_of[0]].scale_options
               for f in D.FORMATS.values() if f.option_of)
    assert set(D.KAPPA_SEGMENT) == set(D.KAPPAS)


def test_group_scalars_are_the_declared_scalars():
    names = [f.name for f in dataclasses.fields(GroupScalars)]
    assert names == [s.name for s in D.SCALARS] + ["inv_scale", "found_inf"]


def test_kind_scalars_and_slots_are_declared_names():
    for k in D.KINDS:
        assert set(k.scalars) <= set(D.SCALAR_NAMES), k
        assert {s.name for s in k.slots} <= {"m", "v", "G"}
        assert set(k.random) <= set(D.RANDOM_PURPOSES)
        assert (k.reduction == "envelope") == (k.family == "stochastic")


@pytest.mark.parametrize("family,kw,keys", [
    ("sign", {}, set()),
    ("signum", {}, {"m"}),
    ("lion", {"kappa": "l2"}, {"m"}),
    ("stochastic", {"base": "sgd"}, {"G", "step"}),
    ("stochastic", {"base": "adamw", "envelope": "row"}, {"m", "v", "G", "step"}),
])
def test_allocated_state_follows_the_slots(family, kw, keys):
    rule = R.UpdateRule(family=family, **kw)
    st = state_layout.allocate(rule, (6, 5), 30, torch.device("cpu"))
    assert set(st) == keys
    fp8 = state_layout.allocate(R.UpdateRule(family=family, state_dtype="fp8_e4m3", fp8_min_numel=0,
                                             state_block=8, **kw), (6, 5), 30, torch.device("cpu"))
    elem = {s.name for s in state_layout.element_slots(rule)}
    assert set(fp8) == keys | {state_layout.scale_key(n) for n in elem}
    for n in elem:
        assert fp8[n].dtype == torch.float8_e4m3fn and fp8[state_layout.scale_key(n)].shape == (4,)
    if "G" in keys and rule.envelope == "row":
        assert st["G"].shape == (6,) and st["G"].dtype == torch.float32


def test_generated_header_and_schema_name_every_declared_item():
    header = D.cpp_header()
    for k in D.KINDS:
        assert f"K_{k.name.upper()} = {k.id}" in header
    for f in D.FORMATS.values():
        assert f"FMT_{f.name.upper()} = {f.id}" in header
    schema = D.step_schema()
    for s in D.SCALARS:
        assert f"float {s.name}," in schema and f"{s.ctype} {s.name};" in header
    # params, the 9 state lists (codes, block scales, tensor scales of m, v, env), signs, stats
    assert schema.count("Tensor(") == 12 and ", *, " in schema
    assert ("Tensor(h!)[] m_tensor_scale, Tensor(i!)[] v_tensor_scale, Tensor(j!)[] env_tensor_scale, "
            "Tensor(k!)[] signs, Tensor(l!)[] stats, *,") in schema
    for i, name in enumerate(D.STEP_STATS):
        assert f"STAT_{name.upper()} = {i}" in header
