"""``torch.compile(opt.step)`` with a tensor lr driven by a scheduler: one graph, no graph
break, no recompilation as the scheduler changes the lr, and the same bits as eager. Tensor
options are validated when they are set, not read on the host inside the step."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import signopt
from signopt import build


def _backend_or_skip(name: str) -> None:
    if name == "cpp":
        try:
            build.load()
        except build.BuildUnavailable as exc:
            pytest.skip(f"the C++ extension cannot be built here: {exc}")


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("scheduler", ["step", "cosine"])
def test_compiled_lion_step_has_no_graph_break_and_no_recompile(backend, scheduler):
    _backend_or_skip(backend)
    torch._dynamo.reset()
    models = [_model(0), _model(0)]
    opts = [signopt.Lion(m.parameters(), lr=torch.tensor(0.01), betas=(0.8, 0.95), weight_decay=0.2,
                         backend=backend) for m in models]
    make = {"step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7),
            "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20)}[scheduler]
    scheds = [make(o) for o in opts]
    counter = CompileCounterWithBackend("aot_eager")
    # the optimizer's own step (a scheduler wraps ``opt.step`` in a function Dynamo skips)
    compiled = torch.compile(type(opts[0]).step, fullgraph=True, backend=counter)  # a break raises
    gen = torch.Generator().manual_seed(1)
    lrs = []
    for t in range(7):
        x = torch.randn(4, 6, generator=gen)
        for m in models:
            m.zero_grad(set_to_none=False)
            m(x).square().sum().backward()
        compiled(opts[0])
        opts[1].step()
        for s in scheds:
            s.step()
        lrs.append(float(opts[0].param_groups[0]["lr"]))
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            assert torch.equal(a, b), f"step {t}"
        if t == 1:  # step 0 allocates state and builds the plan, step 1 runs the kept plan
            warm = counter.frame_count
    assert len(set(lrs)) == 7  # the scheduler changed the lr every step
    assert warm == 2 and counter.frame_count == warm, (
        f"{counter.frame_count - warm} compilations over the 5 scheduler steps after the first two")


def test_explain_reports_no_graph_break():
    torch._dynamo.reset()
    model = _model(2)
    opt = signopt.Lion(model.parameters(), lr=torch.tensor(0.01), weight_decay=0.1, backend="torch")
    torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (1 + e))
    model(torch.randn(3, 6)).sum().backward()
    explained = torch._dynamo.explain(opt.step)()
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]


def test_a_new_tensor_lr_is_validated_at_the_next_step():
    """Replacing the lr tensor (not writing into it) is a change of option: read and checked."""
    model = _model(3)
    opt = signopt.Lion(model.parameters(), lr=torch.tensor(0.01), backend="torch")
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[0]["lr"] = torch.tensor(-1.0)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    opt.param_groups[0]["betas"] = (torch.tensor(0.9), torch.tensor(1.5))
    opt.param_groups[0]["lr"] = torch.tensor(0.01)
    with pytest.raises(ValueError, match=r"betas\[1\] must be < 1.0"):
        opt.step()
