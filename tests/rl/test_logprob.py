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


@pytest.mark.parametrize("layers", [1, 2])
def test_shared_prompt_forward_matches_full_forward(layers):
    """Rows with one prompt share its forward (KV cache gathered to the rows): same log-probs,
    entropies and parameter gradients as running every row whole, with left padding, masked
    completion tails and a row whose prompt appears once."""
    from signopt.rl.modeling import completion_logprobs, decoder_hidden
    from signopt.rl.rollout import completion_masks
    from signopt.rl.modeling import tiny_model
    from signopt.rl.tokenizer import char_tokenizer

    tok = char_tokenizer()
    model = tiny_model(tok, hidden=32, layers=layers, heads=2, intermediate=64, seed=0)
    prompts = ["7+5=", "12+34=", "7+5=", "99+1=", "12+34=", "7+5="]
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    gen = torch.Generator().manual_seed(0)
    comp = torch.randint(3, len(tok), (len(prompts), 4), generator=gen)
    comp[1, 2] = comp[4, 1] = tok.eos_token_id
    mask, _ = completion_masks(comp, tok.eos_token_id)
    seqs = torch.cat([enc["input_ids"], torch.where(mask, comp, tok.pad_token_id)], 1)
    attn = torch.cat([enc["attention_mask"], mask.long()], 1)
    P = enc["input_ids"].shape[1]

    def run(share):
        model.zero_grad()
        lp, ent = completion_logprobs(model, seqs, attn, P, mask, temperature=0.7, share_prompts=share)
        (lp * torch.linspace(-1, 1, lp.numel()).view_as(lp)).sum().backward()
        return lp.detach(), ent, [p.grad.clone() for p in model.parameters()]

    full, shared = run(False), run(True)
    torch.testing.assert_close(shared[0], full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared[1], full[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(shared[2], full[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert full[0][~mask].eq(0).all() and full[0][mask].lt(0).all()
    # distinct prompts only: the plain path, exactly
    distinct = [0, 1, 3]
    h_share = decoder_hidden(model, seqs[distinct], attn[distinct], P, share_prompts=True)
    h_full = decoder_hidden(model, seqs[distinct], attn[distinct], P, share_prompts=False)
    assert torch.equal(h_share, h_full)
