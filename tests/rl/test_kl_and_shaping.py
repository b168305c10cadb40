import torch

from signopt.rl.kl import kl_penalty
from signopt.rl.shaping import informative_groups, soft_overlong_penalty


def test_kl_estimators():
    logp = torch.linspace(-3, 0, 7, dtype=torch.float64, requires_grad=True)
    ref = torch.linspace(0, -3, 7, dtype=torch.float64)
    d = ref - logp.detach()
    assert torch.allclose(kl_penalty(logp, ref, "k1"), -d)
    assert torch.allclose(kl_penalty(logp, ref, "k2"), 0.5 * d**2)
    k3 = kl_penalty(logp, ref, "k3")
    assert torch.allclose(k3, d.exp() - d - 1) and (k3 >= 0).all()
    assert kl_penalty(logp, ref - 100, "low_var_kl").max() <= 10


def test_k3_zero_value_and_gradient_at_equal_policies():
    logp = torch.randn(5, dtype=torch.float64, requires_grad=True)
    k3 = kl_penalty(logp, logp.detach(), "k3")
    (g,) = torch.autograd.grad(k3.sum(), logp)
    assert torch.equal(k3, torch.zeros_like(k3)) and torch.equal(g, torch.zeros_like(g))


def test_dynamic_sampling_and_overlong_penalty():
    r = torch.tensor([1.0, 0, 1, 1, 0, 0, 1, 0])
    assert informative_groups(r, 2).tolist() == [True, True, False, False, False, False, True, True]
    pen = soft_overlong_penalty(torch.tensor([2, 6, 8, 9]), max_len=8, cache_len=4)
    assert pen.tolist() == [0.0, -0.5, -1.0, -1.0]
