import torch

from signopt.rl.advantages import compute_advantages
from signopt.rl.loss_inputs import LossInputs


def make_inputs(
    n_groups: int = 3, group_size: int = 4, T: int = 6, *, seed: int = 0, on_policy: bool = False, spread: float = 0.3
) -> LossInputs:
    """fp64 rollouts, right-padded masks (every row ≥ 1 token), binary rewards with mixed groups."""
    g = torch.Generator().manual_seed(seed)
    B = n_groups * group_size
    logp = -torch.nn.functional.softplus(torch.randn(B, T, generator=g, dtype=torch.float64))
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    old = logp.detach().clone() if on_policy else logp + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logp + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    rewards = torch.randint(0, 2, (B,), generator=g).double()
    rewards.view(n_groups, group_size)[:, 0] = 1.0
    rewards.view(n_groups, group_size)[:, 1] = 0.0
    adv = compute_advantages("grpo", rewards, group_size).values
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 1.5 + 0.05
    tokens = torch.randint(0, 3, (B, T), generator=g)
    return LossInputs(
        logp=logp.requires_grad_(True), old_logp=old, mask=mask, advantages=adv, ref_logp=ref, rewards=rewards,
        entropy=entropy, tokens=tokens, group_size=group_size,
    )
