"""Mutation check of signopt.rl's formulas: apply single-line formula bugs one at a time to a
temporary copy of ``signopt/rl`` and report which ones the formula tests catch.

    python tests/rl/mutation_check.py [--list] [--only ID ...]

Each mutation replaces one expression inside one function (``anchor`` is the text that starts the
function, ``old`` the first occurrence after it). The tests run in a subprocess that loads the
mutated copy as ``signopt.rl`` (a pytest plugin written next to it), so the checkout is never
modified. Exit status 0 when every mutation is caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "signopt" / "rl"
TESTS = ["test_losses.py", "test_advantages.py", "test_kl_and_shaping.py", "test_loss_oracles.py",
         "test_estimator_oracles.py"]


class Mutation(NamedTuple):
    id: str
    file: str
    anchor: str
    old: str
    new: str


M = Mutation
MUTATIONS = [
    # the PPO clipped surrogate shared by grpo, dr_grpo, dapo, riskpo, hapo and the experimental losses
    M("ppo_min_to_max", "surrogate.py", "def clipped_surrogate", "-torch.minimum(ratio * adv", "-torch.maximum(ratio * adv"),
    M("ppo_low_bound_uses_high", "surrogate.py", "def clipped_surrogate", "1 - eps_low", "1 - eps_high"),
    M("seq_sum_mean_per_micro_batch", "surrogate.py", "def seq_sum", 'per_seq.sum() / max(x.norm("num_seqs"), 1.0)',
      "per_seq.mean()"),
    # losses
    M("grpo_kl_sign", "losses.py", "def grpo(", "per_token + beta * kl_penalty", "per_token - beta * kl_penalty"),
    M("grpo_kl_to_old_policy", "losses.py", "def grpo(", "kl_penalty(x.logp, x.ref_logp, kl)",
      "kl_penalty(x.logp, x.old_logp, kl)"),
    M("grpo_clip_high_ignored", "losses.py", "def grpo(", "clip_eps if clip_eps_high is None else clip_eps_high", "clip_eps"),
    M("dr_grpo_default_agg", "losses.py", "def dr_grpo(", '"seq-mean-token-sum-norm"', '"seq-mean-token-mean"'),
    M("dapo_bounds_swapped", "losses.py", "def dapo(", "clip_eps_low, clip_eps_high), agg)",
      "clip_eps_high, clip_eps_low), agg)"),
    M("gspo_exp_sum", "losses.py", "def gspo(", "masked_seq_mean(x.log_ratio, x.mask).exp()",
      "(x.log_ratio * x.mask).sum(-1).exp()"),
    M("gspo_empty_rows_count", "losses.py", "def gspo(", "_zero_empty_rows(x, clipped_surrogate(s, x.advantages, clip_eps_low, clip_eps_high))",
      "clipped_surrogate(s, x.advantages, clip_eps_low, clip_eps_high)"),
    M("gspo_token_no_stop_gradient", "losses.py", "def gspo_token(", ".detach().unsqueeze(-1)", ".unsqueeze(-1)"),
    M("gmpo_arithmetic_mean", "losses.py", "def gmpo(", "masked_seq_mean(clipped, x.mask).exp()",
      "masked_seq_mean(clipped.exp(), x.mask)"),
    M("gmpo_clip_removed", "losses.py", "def gmpo(", "signed.clamp(-clip_log, clip_log)", "signed"),
    M("gmpo_empty_rows_count", "losses.py", "def gmpo(", "_zero_empty_rows(x, -x.advantages * rho)", "-x.advantages * rho"),
    M("cispo_weight_not_detached", "losses.py", "def cispo(", "-w.detach() * x.adv", "-w * x.adv"),
    M("cispo_max_clip", "losses.py", "def cispo(", "r.clamp(max=eps_max)", "r.clamp(max=1 + clip_eps_high)"),
    M("sapo_tau_swapped", "losses.py", "def sapo(", "torch.tensor(tau_pos, dtype=dt), torch.tensor(tau_neg, dtype=dt)",
      "torch.tensor(tau_neg, dtype=dt), torch.tensor(tau_pos, dtype=dt)"),
    M("sapo_gate_scale", "losses.py", "def sapo(", "* (4.0 / tau)", "* 4.0"),
    M("dual_clip_removed", "losses.py", "def vanilla_dual_clip(", "torch.minimum(ppo, -x.adv * clip_ratio_c)", "ppo"),
    M("real_tau_ignored", "losses.py", "def real(", "masked_seq_mean(x.log_ratio, x.mask) / tau",
      "masked_seq_mean(x.log_ratio, x.mask)"),
    M("real_mixed_groups_only", "losses.py", "def real(", 'x.norm("num_groups")', "mixed.sum().clamp(min=1)"),
    M("gtpo_no_boost", "losses.py", "def gtpo(", "torch.tensor(conflict_boost, dtype=one.dtype)", "one"),
    M("gtpo_entropy_sign", "losses.py", "def gtpo(", "x.advantages - entropy_coef * h_bar", "x.advantages + entropy_coef * h_bar"),
    M("gtpo_any_position_conflict", "losses.py", "def gtpo(", "torch.cumprod(raw.long(), -1).bool()", "raw"),
    M("gtpo_no_suffix", "losses.py", "def gtpo(", "* torch.where(suffix, side, one)", ""),
    M("gtpo_no_conflict_count", "losses.py", "def gtpo(", "x.mask) / n_conf", "x.mask)"),
    M("gtpo_shaping_nonzero_adv_only", "losses.py", "def gtpo(", "x.advantages - entropy_coef * h_bar,",
      "x.advantages - entropy_coef * h_bar * (x.advantages != 0),"),
    M("gtpo_ratio_to_old", "losses.py", "def gtpo(", "x.log_ratio if is_ratio else", "x.log_ratio if True else"),
    M("nft_epsilon_clamp", "losses.py", "def nft(", "proxy.clamp(min=clamp_negative)", "proxy.clamp(min=1e-6)"),
    M("nft_weight_dropped", "losses.py", "def nft(", "(1 - r_hat) * torch.where", "torch.where"),
    M("nft_r_hat_unclamped", "losses.py", "def nft(", "acc.clamp(0.02, 0.98)", "acc"),
    M("trpa_beta_ignored", "losses.py", "def trpa(", "scale = beta * torch.where", "scale = torch.where"),
    M("trpa_anisotropy_ignored", "losses.py", "def trpa(", "torch.tensor(anisotropy, dtype=dt)", "1.0"),
    M("trpa_anisotropy_outside_sigmoid", "losses.py", "def trpa(", "pair = -F.logsigmoid(scale * (",
      "pair = -(scale / beta) * F.logsigmoid(beta * ("),
    M("trpa_top_is_group_best", "losses.py", "def trpa(", "x.rewards.to(dt) >= top_reward",
      "x.rewards.to(dt) >= grouped(x, x.rewards.to(dt)).amax(-1).repeat_interleave(x.group_size)"),
    M("trpa_kl_to_reference", "losses.py", "def trpa(", "kl_low_var(x.logp, x.old_logp)", "kl_low_var(x.logp, x.ref_logp)"),
    M("trpa_kl_unclamped", "losses.py", "def trpa(", "kl_low_var(x.logp, x.old_logp)", 'kl_penalty(x.logp, x.old_logp, "k3")'),
    M("trpa_no_fallback", "losses.py", "def trpa(", 'if x.norm("num_pairs") == 0:', "if False:"),
    M("trpa_fallback_sign", "losses.py", "def trpa(", "torch.ones((), dtype=dt), -1.0)", "torch.ones((), dtype=dt), 1.0)"),
    M("riskpo_default_agg", "losses.py", "def riskpo(", 'agg: str = "token-mean"', 'agg: str = "seq-mean-token-mean"'),
    M("hapo_slope_halved", "losses.py", "def hapo(", "clip_eps_high * (1 + alpha * h)", "clip_eps_high * (1 + 0.5 * alpha * h)"),
    M("hapo_low_sign", "losses.py", "def hapo(", "clip_eps_low * (1 - alpha * h)", "clip_eps_low * (1 + alpha * h)"),
    # experimental losses
    M("dhpo_weights_swapped", "experimental_losses.py", "def dhpo(", "weight * token + (1 - weight) * seq",
      "weight * seq + (1 - weight) * token"),
    M("minpro_no_cummin", "experimental_losses.py", "def minpro(", "torch.cummin(x.log_ratio, dim=-1).values", "x.log_ratio"),
    M("etr_unbiased_var", "experimental_losses.py", "def etr(", "var(-1, unbiased=False)", "var(-1, unbiased=True)"),
    M("etr_signed_adv", "experimental_losses.py", "def etr(", "lam_micro * x.adv.abs()", "lam_micro * x.adv"),
    M("r2vpo_abs_dev", "experimental_losses.py", "def r2vpo(", "lam * dev**2", "lam * dev.abs()"),
    M("r2vpo_dual_unbiased", "experimental_losses.py", "def r2vpo_dual_update(", "r.var(unbiased=False)",
      "r.var(unbiased=True)"),
    M("d3s_count_unscaled", "experimental_losses.py", "def d3s(", 'x.norm("num_seqs") * k / x.group_size', 'x.norm("num_seqs")'),
    M("d3s_keeps_smallest", "experimental_losses.py", "def d3s(", "score.topk(k, dim=-1)", "(-score).topk(k, dim=-1)"),
    M("fg_expo_kl_unweighted", "experimental_losses.py", "def fg_expo(", "beta * p * kl_penalty", "beta * kl_penalty"),
    M("fg_expo_width", "experimental_losses.py", "def fg_expo(", "(2 * sigma**2)", "(sigma**2)"),
    M("progrpo_sign", "experimental_losses.py", "def progrpo(", "-alpha * masked_seq_mean", "alpha * masked_seq_mean"),
    M("capo_abs_proxy", "experimental_losses.py", "def capo(", "x.log_ratio.detach() ** 2", "x.log_ratio.detach().abs()"),
    # advantage estimators
    M("grpo_adv_population_std", "advantages.py", "def grpo_advantages(", "unbiased=True) if group_size > 1",
      "unbiased=False) if group_size > 1"),
    M("grpo_adv_eps_floor", "advantages.py", "def grpo_advantages(", "centred / (std + eps)", "centred / std.clamp(min=eps)"),
    M("dr_grpo_adv_median", "advantages.py", "def dr_grpo_advantages(", "a = g - g.mean(-1, keepdim=True)",
      "a = g - g.median(-1, keepdim=True).values"),
    M("batch_std_population", "advantages.py", "def batch_std_advantages(", "rewards.std(unbiased=True)",
      "rewards.std(unbiased=False)"),
    M("rloo_factor_dropped", "advantages.py", "def rloo_advantages(", "a = group_size / (group_size - 1) * (", "a = ("),
    M("mc_grpo_multiplier_dropped", "advantages.py", "def mc_grpo_advantages(", "a * group_size / nonzero.clamp(min=1)", "a"),
    M("mc_grpo_mad_floor", "advantages.py", "def mc_grpo_advantages(", "(mad + eps)", "mad.clamp(min=eps)"),
    M("bnpo_population_var", "advantages.py", "def bnpo_advantages(", "p_hat.var(unbiased=True)", "p_hat.var(unbiased=False)"),
    M("bnpo_moment_divisor", "advantages.py", "def bnpo_advantages(", "1 + m * common / 3", "1 + m * common / 2"),
    M("dgpo_eps_dropped", "advantages.py", "def dgpo_advantages(", "(centred.abs().sum(-1, keepdim=True) + eps)",
      "centred.abs().sum(-1, keepdim=True).clamp(min=1e-30)"),
    M("dgpo_length_ratio_inverted", "advantages.py", "def dgpo_advantages(", "lens.sum() / kept", "kept / lens.sum()"),
    M("dgpo_weight_sign", "advantages.py", "def dgpo_advantages(", "-acc / temperature", "acc / temperature"),
    M("opo_plain_mean", "advantages.py", "def opo_advantages(", "a = g - baseline", "a = g - g.mean(-1, keepdim=True)"),
    M("riskpo_quantiles_swapped", "advantages.py", "def riskpo_advantages(",
      "torch.quantile(s, alpha), torch.quantile(s, beta)", "torch.quantile(s, beta), torch.quantile(s, alpha)"),
    M("riskpo_cvar_divisor", "advantages.py", "def riskpo_advantages(", "(torch.minimum(s, q_a) - q_a) / alpha",
      "(torch.minimum(s, q_a) - q_a) / beta"),
    M("riskpo_population_std", "advantages.py", "def riskpo_advantages(", "a.std(unbiased=True)", "a.std(unbiased=False)"),
    # aggregation and normalisers
    M("token_mean_micro_batch_count", "aggregation.py", "def aggregate(", "masked.sum() / max(float(num_tokens), 1.0)",
      "masked.sum() / max(float(m.sum()), 1.0)"),
    M("seq_mean_token_mean_micro_mean", "aggregation.py", "def aggregate(",
      "(masked.sum(-1) / m.sum(-1).clamp(min=1)).sum() / max(float(num_seqs), 1.0)",
      "(masked.sum(-1) / m.sum(-1).clamp(min=1)).mean()"),
    M("seq_mean_token_sum_micro_rows", "aggregation.py", "def aggregate(",
      "return masked.sum() / max(float(num_seqs), 1.0)\n", "return masked.sum() / max(float(loss.shape[0]), 1.0)\n"),
    M("sum_norm_micro_width", "aggregation.py", "def aggregate(", "(max(float(num_seqs), 1.0) * max_len)",
      "(max(float(num_seqs), 1.0) * loss.shape[1])"),
    M("masked_seq_mean_divides_by_width", "aggregation.py", "def masked_seq_mean(", "m.sum(-1).clamp(min=1)", "x.shape[-1]"),
    M("step_tokens_count_padding", "loss_inputs.py", "def step_norms(", '"num_tokens": float(m.sum())',
      '"num_tokens": float(m.numel())'),
    M("log_ratio_clamp_2", "loss_inputs.py", "LOG_RATIO_CLAMP =", "LOG_RATIO_CLAMP = 20.0", "LOG_RATIO_CLAMP = 2.0"),
    M("log_ratio_unmasked", "loss_inputs.py", "def log_ratio(",
      "return torch.where(self.mask.bool(), lr, torch.zeros((), dtype=lr.dtype))", "return lr"),
    # KL estimators
    M("k1_sign", "kl.py", "def kl_k1(", "return logp - ref_logp", "return ref_logp - logp"),
    M("k2_half_dropped", "kl.py", "def kl_k2(", "0.5 * (ref_logp - logp) ** 2", "(ref_logp - logp) ** 2"),
    M("k3_linear_term_dropped", "kl.py", "def kl_k3(", "torch.exp(d) - d - 1", "torch.exp(d) - 1"),
    M("low_var_clamp_widened", "kl.py", "def kl_low_var(", "clamp(-10.0, 10.0)", "clamp(-10.0, 20.0)"),
]

PLUGIN = '''"""Loads the mutated copy beside this file as signopt.rl before any test imports it."""
import importlib.util
import os
import sys

import signopt

_path = os.environ["SIGNOPT_RL_MUTANT"]
_spec = importlib.util.spec_from_file_location("signopt.rl", os.path.join(_path, "__init__.py"),
                                               submodule_search_locations=[_path])
_mod = importlib.util.module_from_spec(_spec)
sys.modules["signopt.rl"] = _mod
signopt.rl = _mod
_spec.loader.exec_module(_mod)
'''


def mutate(source: str, m: Mutation) -> str:
    """``source`` with the first ``m.old`` after ``m.anchor`` replaced by ``m.new``."""
    start = source.find(m.anchor)
    if start < 0:
        raise ValueError(f"{m.id}: anchor {m.anchor!r} not found in {m.file}")
    at = source.find(m.old, start)
    if at < 0:
        raise ValueError(f"{m.id}: {m.old!r} not found after {m.anchor!r} in {m.file}")
    return source[:at] + m.new + source[at + len(m.old):]


def run_tests(mutant_dir: Path, plugin_dir: Path) -> tuple[bool, str]:
    """(passed, last output line) of the formula tests against the copy in ``mutant_dir``."""
    env = dict(os.environ, SIGNOPT_RL_MUTANT=str(mutant_dir), PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "mutant_plugin",
           *[str(ROOT / "tests" / "rl" / t) for t in TESTS]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    return proc.returncode == 0, lines[-1] if lines else proc.stderr.strip()[-200:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print the mutations and exit")
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these mutation ids")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        raise SystemExit(f"unknown ids: {sorted(set(args.only) - {m.id for m in MUTATIONS})}")
    for m in chosen:  # every mutation applies to today's sources before anything runs
        mutate((PACKAGE / m.file).read_text(), m)
    if args.list:
        for m in chosen:
            print(f"{m.id:34s} {m.file}: {m.old!r} -> {m.new!r}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        plugin_dir = Path(tmp) / "plugin"
        plugin_dir.mkdir()
        (plugin_dir / "mutant_plugin.py").write_text(PLUGIN)
        mutant = Path(tmp) / "rl"
        shutil.copytree(PACKAGE, mutant, ignore=shutil.ignore_patterns("__pycache__"))
        ok, line = run_tests(mutant, plugin_dir)
        if not ok:
            raise SystemExit(f"the unmutated copy fails its tests: {line}")
        survived = []
        t0 = time.perf_counter()
        for k, m in enumerate(chosen, 1):
            path = mutant / m.file
            original = path.read_text()
            path.write_text(mutate(original, m))
            try:
                passed, line = run_tests(mutant, plugin_dir)
            finally:
                path.write_text(original)
            print(f"[{k:2d}/{len(chosen)}] {'SURVIVED' if passed else 'caught  '} {m.id:34s} {line}", flush=True)
            if passed:
                survived.append(m.id)
    caught = len(chosen) - len(survived)
    print(f"mutation score: {caught}/{len(chosen)} caught ({time.perf_counter() - t0:.0f} s)"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 0 if not survived else 1


if __name__ == "__main__":
    sys.exit(main())
