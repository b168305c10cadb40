"""DCP: save optimizer state (FP8 codes + scales, bf16, block envelopes, step counters) from 2
FSDP2 ranks; load on 1 (FSDP2 and plain), 2 and 4 ranks through get/set_optimizer_state_dict;
state equals the saved state bit for bit and continuing equals the uninterrupted run."""
from __future__ import annotations

import pytest
import torch

import harness
from scenarios import DCP_SPECS

NAMES = list(DCP_SPECS)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp")
    ckpt = str(root / "ckpt")
    res = harness.run("dcp_save", 2, root, timeout=120, ckpt=ckpt, names=NAMES)
    return ckpt, root, res[0]


def _equal_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys()
        for name in a[k]:
            x, y = a[k][name], b[k][name]
            assert x.dtype == y.dtype and x.shape == y.shape, (k, name)
            if x.element_size() == 1:
                x, y = x.view(torch.uint8), y.view(torch.uint8)
            assert torch.equal(x, y), (k, name)


def _check(saved_run: dict, loaded: dict, continued: bool = True) -> None:
    for name in NAMES:
        _equal_state(saved_run[name]["state"], loaded[name]["state"])
        if continued:
            for p, q in zip(saved_run[name]["params"], loaded[name]["params"]):
                assert torch.equal(p, q), name


def test_reshard_2_to_1(saved):
    ckpt, root, run = saved
    runs = [["dcp_load", {"ckpt": ckpt, "names": NAMES}],
            ["dcp_load", {"ckpt": ckpt, "names": NAMES, "sharded": False}]]
    res = harness.run("suite", 1, root, timeout=120, runs=runs)[0]
    _check(run, res[0])  # FSDP2 on one rank
    _check(run, res[1])  # a plain, unsharded model and optimizer


def test_reshard_2_to_2(saved):
    ckpt, root, run = saved
    for rank_res in harness.run("dcp_load", 2, root, timeout=120, ckpt=ckpt, names=NAMES):
        _check(run, rank_res)


def test_reshard_2_to_4_state(saved):
    """Four ranks shard (7, 64) as 2/2/2/1 rows; the loaded state must be the saved one (with 4
    ranks the reduce-scattered gradient is not bitwise the 2-rank one, so no continuation)."""
    ckpt, root, run = saved
    for rank_res in harness.run("dcp_load", 4, root, timeout=150, ckpt=ckpt, names=NAMES, after=0):
        _check(run, rank_res, continued=False)


def test_set_optimizer_state_dict_refuses_and_keeps_state(tmp_path):
    """Another rule's state dict, and a state tensor of the wrong shape, are refused under FSDP2
    before anything is replaced (ValueError naming the rules / the parameter and key)."""
    res = harness.run("dcp_load_refusals", 2, tmp_path, timeout=120)
    for rank_res in res:
        rule, shape = rank_res["wrong_rule"], rank_res["wrong_shape"]
        assert "'signum'" in rule["message"] and "'lion(kappa=l1)'" in rule["message"], rule["message"]
        assert "state 'm' has shape (5,)" in shape["message"] and shape["first"] in shape["message"], shape["message"]
        assert rule["unchanged"] and shape["unchanged"]
