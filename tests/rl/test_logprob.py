import pytest
import torch

from signopt.rl.logprob import chunked_logprobs, naive_logprobs


@pytest.mark.parametrize("temperature,bias,chunk", [(1.0, False, 37 * 3), (0.7, True, 37 * 5), (1.0, True, 1)])
def test_chunked_matches_naive(temperature, bias, chunk):
    g = torch.Generator().manual_seed(0)
    B, T, H, V = 3, 5, 8, 37
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    targets = torch.randint(0, V, (B, T), generator=g)
    cot = torch.randn(B, T, generator=g, dtype=torch.float64)
    outs = []
    for fn, kw in ((naive_logprobs, {}), (chunked_logprobs, {"max_chunk_elems": chunk})):
        params = [t.clone().requires_grad_(True) for t in (hidden, weight) + ((b,) if bias else ())]
        logp, ent = fn(params[0], params[1], targets, params[2] if bias else None, temperature=temperature, **kw)
        grads = torch.autograd.grad((logp * cot).sum(), params)
        outs.append((logp.double(), ent.double(), grads))
    (lp0, e0, g0), (lp1, e1, g1) = outs
    assert torch.allclose(lp0, lp1, atol=1e-5) and torch.allclose(e0, e1, atol=1e-5)
    for a, c in zip(g0, g1):
        assert torch.allclose(a, c, atol=1e-5)


def test_bad_arguments():
    h, w, t = torch.zeros(2, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        chunked_logprobs(h, w, t, temperature=0.0)
    with pytest.raises(ValueError, match="max_chunk_elems"):
        chunked_logprobs(h, w, t, max_chunk_elems=0)
