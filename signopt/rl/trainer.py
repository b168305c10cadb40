"""The RL loop: prompts → G sampled rollouts → verifiable rewards → advantages → old/reference
log-probs → μ inner epochs over micro-batches (step-wide normalisers) → optimizer step → metrics,
with checkpoints that resume bit-for-bit."""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from .advantages import compute_advantages
from .config import RLConfig, check_out_dir
from .experimental_losses import r2vpo_dual_update
from .kl import kl_k3
from .loss_inputs import LossInputs, step_norms
from .losses import DEFAULT_ADVANTAGE, compute_loss
from .modeling import completion_logprobs, load_policy
from .optimizers import build_optimizer, default_lr, lr_factor
from .plotting import missing_dependency, plot_metrics
from .resume import STATE_FILE, contradictions
from .rollout import Rollouts, evaluate, generate, score
from .shaping import informative_groups, soft_overlong_penalty
from .tasks import make_task
from .warmstart import warm_start

NEEDS_REFERENCE = ("trpa",)
NEEDS_OLD_PASS_ENTROPY = ("hapo",)
LENGTH_ADVANTAGES = ("opo", "dgpo")  # estimators that read the completion lengths


class Trainer:
    """Build with an :class:`RLConfig` (and optionally a model/tokenizer pair); call :meth:`train`."""

    def __init__(self, cfg: RLConfig, model=None, tokenizer=None):
        """With ``cfg.resume`` the run continues from that checkpoint; ``cfg`` must then agree with
        the checkpoint's config outside :data:`~signopt.rl.resume.RESUME_FREE`
        (:func:`~signopt.rl.resume.resume_config` builds such a config)."""
        cfg.validate()
        check_out_dir(cfg)
        if cfg.resume:
            state = torch.load(Path(cfg.resume) / STATE_FILE, weights_only=True)
            bad = contradictions(state["config"], asdict(cfg))
            if bad:
                raise ValueError("; ".join(bad))
        self.cfg = cfg
        if cfg.out is not None and missing_dependency():  # said at the start, not after the run
            print(f"signopt.rl: {missing_dependency()}; curves.png will not be written", file=sys.stderr)
        torch.set_num_threads(cfg.threads)
        self.task = make_task(cfg.task, data=cfg.data, eval_data=cfg.eval_data, digits=cfg.digits,
                              eval_size=cfg.eval_size)
        self.advantage = cfg.advantage or DEFAULT_ADVANTAGE.get(cfg.loss, "grpo")
        self.lr = default_lr(cfg.optimizer) if cfg.lr is None else cfg.lr
        self.metrics: list[dict] = []
        self.warmstart: dict = {}
        self.rl_seconds_before = 0.0  # RL time of the run before this session (resumed runs)
        self._session_start: float | None = None
        if cfg.resume:
            self._restore(Path(cfg.resume), state)
        else:
            self._fresh(model, tokenizer)

    # ----------------------------------------------------------------- setup
    def _fresh(self, model, tokenizer) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        if model is None:
            model, tokenizer = load_policy(cfg.model, seed=cfg.seed)
            if cfg.model is None and cfg.warmstart_target > 0:
                t0 = time.perf_counter()
                self.warmstart = warm_start(
                    model, tokenizer, self.task, target=cfg.warmstart_target, max_steps=cfg.warmstart_max_steps,
                    batch_size=cfg.warmstart_batch, lr=cfg.warmstart_lr, eval_every=cfg.warmstart_eval_every,
                    max_new_tokens=cfg.max_new_tokens, gen=self.data_gen, ema=cfg.warmstart_ema,
                    progress=cfg.progress,
                )
                self.warmstart["seconds"] = time.perf_counter() - t0
        elif tokenizer is None:
            raise ValueError("a model passed to Trainer needs its tokenizer")
        self.model, self.tokenizer = model, tokenizer
        self.ref = self._frozen_copy() if self._wants_reference() else None
        self.average = self._frozen_copy() if cfg.policy_ema else None
        self.optimizer = build_optimizer(cfg.optimizer, model.parameters(), self.lr, cfg.weight_decay,
                                         **self._optimizer_kwargs())
        self.step = 0
        self.r2vpo_lam = float(cfg.knobs.get("lam", 0.0))
        self.accuracy_before = evaluate(model, tokenizer, self.task, cfg.max_new_tokens)

    def _wants_reference(self) -> bool:
        return self.cfg.reference_model or self._loss_uses_reference()

    def _loss_uses_reference(self) -> bool:
        return self.cfg.loss in NEEDS_REFERENCE or bool(self.cfg.knobs.get("beta"))

    def _reference_pass(self) -> bool:
        every = self.cfg.kl_every
        return self.ref is not None and (self._loss_uses_reference() or (every > 0 and (self.step + 1) % every == 0))

    def _frozen_copy(self):
        ref = copy.deepcopy(self.model).eval()
        ref.requires_grad_(False)
        return ref

    @property
    def result_model(self):
        """The model a run produces: the policy, or its weight average with ``policy_ema``."""
        return self.model if self.average is None else self.average

    def save(self, directory: str | Path) -> None:
        """Checkpoint: the result model (``model/``, loadable with ``from_pretrained``) and the
        trainer state (the policy's own weights included)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.result_model.save_pretrained(d / "model")
        self.tokenizer.save_pretrained(d / "model")
        torch.save({
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "ref_model": None if self.ref is None else self.ref.state_dict(),
            "average": None if self.average is None else self.average.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "data_rng": self.data_gen.get_state(),
            "step": self.step,
            "r2vpo_lam": self.r2vpo_lam,
            "accuracy_before": self.accuracy_before,
            "warmstart": self.warmstart,
            "rl_seconds": self.rl_seconds,
        }, d / STATE_FILE)

    def _restore(self, d: Path, state: dict) -> None:
        self.model, self.tokenizer = load_policy(str(d / "model"))
        self.model.load_state_dict(state["model"])
        self.ref = None
        if state["ref_model"] is not None:
            self.ref = self._frozen_copy()
            self.ref.load_state_dict(state["ref_model"])
        self.average = None
        if state.get("average") is not None:
            self.average = self._frozen_copy()
            self.average.load_state_dict(state["average"])
        self.optimizer = build_optimizer(self.cfg.optimizer, self.model.parameters(), self.lr, self.cfg.weight_decay,
                                         **self._optimizer_kwargs())
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.data_gen = torch.Generator()
        self.data_gen.set_state(state["data_rng"])
        self.step, self.r2vpo_lam = state["step"], state["r2vpo_lam"]
        self.accuracy_before, self.warmstart = state["accuracy_before"], state["warmstart"]
        self.rl_seconds_before = state.get("rl_seconds", 0.0)

    @property
    def rl_seconds(self) -> float:
        """Wall time spent in :meth:`train` over the whole run, earlier sessions included."""
        now = 0.0 if self._session_start is None else time.perf_counter() - self._session_start
        return self.rl_seconds_before + now

    # ----------------------------------------------------------------- one RL step
    def _logprobs(self, model, ro: Rollouts, mask: torch.Tensor, rows: slice):
        return completion_logprobs(model, ro.sequences[rows], ro.attention_mask[rows], ro.prompt_len, mask[rows],
                                   temperature=self.cfg.temperature, chunked=self.cfg.chunked_logprobs)

    def _optimizer_kwargs(self) -> dict:
        """The optimizer's constructor arguments besides params, lr and weight decay."""
        return {**self.cfg.optimizer_kwargs, **({"step_stats": True} if self.cfg.step_stats else {})}

    def _step_stats(self) -> dict:
        """The last optimizer step's statistics (``cfg.step_stats``) as flat metrics
        ``opt/g<group>/<name>`` (``update_rms``, ``sign_flip_fraction``, ``nonfinite``,
        ``absmax_<slot>``)."""
        m = {}
        for gi, st in enumerate(self.optimizer.step_stats()):
            if st is None:
                continue
            for name in ("update_rms", "sign_flip_fraction", "nonfinite"):
                m[f"opt/g{gi}/{name}"] = st[name]
            m.update({f"opt/g{gi}/absmax_{slot}": v for slot, v in st["state_absmax"].items()})
        return m

    def rl_step(self) -> dict:
        """One step: sample, score, update; returns its metrics (times in seconds)."""
        cfg, G = self.cfg, self.cfg.group_size
        n_gen = G + 1 if self.advantage == "mc_grpo" else G
        t = {"generate": 0.0, "logprobs": 0.0, "loss_backward": 0.0, "optimizer": 0.0}
        t0 = time.perf_counter()
        examples = self.task.sample(cfg.prompts_per_step, self.data_gen)
        ro = generate(self.model, self.tokenizer, [e.prompt for e in examples], num_return=n_gen,
                      max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature)
        rewards = score(self.task, ro, examples, n_gen)
        t["generate"] = time.perf_counter() - t0
        m = {"step": self.step + 1, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
             "completion_len": float(ro.lengths.double().mean()), "truncated_frac": float(ro.truncated.double().mean())}

        shaped = rewards + soft_overlong_penalty(ro.lengths, cfg.max_new_tokens, cfg.overlong_cache) \
            if cfg.overlong_cache else rewards
        adv = compute_advantages(self.advantage, shaped, n_gen,
                                 **({"lengths": ro.lengths} if self.advantage in LENGTH_ADVANTAGES else {}))
        keep = adv.keep
        if cfg.dynamic_sampling:
            keep = keep & informative_groups(shaped, n_gen)
        m["kept_frac"] = float(keep.double().mean())
        ro, shaped, advantages = ro.select(keep), shaped[keep], adv.values[keep]
        mask = ro.completion_mask & ~ro.truncated.unsqueeze(1) if cfg.overlong_filter else ro.completion_mask
        signal = bool(informative_groups(shaped, G).any()) or self._loss_uses_reference()
        if ro.sequences.shape[0] == 0 or not mask.any() or not signal:
            # Nothing to learn from (every group's rewards are equal): skip the update, since
            # momentum optimizers would otherwise keep moving without a gradient.
            m["skipped"] = True
            m.update({f"time_{k}": v for k, v in t.items()})
            return m

        lr = self.lr * lr_factor(cfg.lr_schedule, self.step, cfg.steps, cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        m["lr"] = lr
        B, mb = ro.sequences.shape[0], cfg.micro_batch_prompts * G
        batches = [slice(s, s + mb) for s in range(0, B, mb)]
        t0 = time.perf_counter()
        old_logp = old_ent = ref_logp = None
        with torch.no_grad():
            if cfg.inner_epochs > 1 or cfg.loss in NEEDS_OLD_PASS_ENTROPY:
                old_logp, old_ent = (torch.cat(x) for x in zip(*(self._logprobs(self.model, ro, mask, b) for b in batches)))
            if self._reference_pass():
                ref_logp = torch.cat([self._logprobs(self.ref, ro, mask, b)[0] for b in batches])
        t["logprobs"] += time.perf_counter() - t0
        norms = step_norms(mask, shaped, G, old_ent)
        knobs = cfg.knobs
        tokens = ro.completion_ids
        loss_sum = ent_sum = kl_sum = 0.0
        for epoch in range(cfg.inner_epochs):
            if cfg.loss == "r2vpo":
                knobs["lam"] = self.r2vpo_lam
            self.optimizer.zero_grad(set_to_none=True)
            step_logp = []
            for b in batches:
                t0 = time.perf_counter()
                logp, ent = self._logprobs(self.model, ro, mask, b)
                t1 = time.perf_counter()
                x = LossInputs(
                    logp=logp, old_logp=logp.detach() if old_logp is None else old_logp[b], mask=mask[b],
                    advantages=advantages[b].to(logp.dtype), ref_logp=None if ref_logp is None else ref_logp[b],
                    rewards=shaped[b], entropy=ent, tokens=tokens[b], group_size=G, norms=norms,
                )
                loss = compute_loss(cfg.loss, x, **knobs)
                loss.backward()
                t["logprobs"] += t1 - t0
                t["loss_backward"] += time.perf_counter() - t1
                step_logp.append(logp.detach())
                if epoch == 0:
                    valid = mask[b]
                    loss_sum += float(loss.detach())
                    ent_sum += float(ent[valid].sum())
                    if ref_logp is not None:
                        kl_sum += float(kl_k3(logp.detach(), ref_logp[b])[valid].sum())
            if cfg.loss == "r2vpo" and cfg.r2vpo_eta:
                # one dual update per optimizer step, from the ratios of the whole step
                logp_all = torch.cat(step_logp)
                self.r2vpo_lam = r2vpo_dual_update(self.r2vpo_lam, logp_all, logp_all if old_logp is None else old_logp,
                                                   mask, cfg.r2vpo_eta, cfg.r2vpo_delta)
            t0 = time.perf_counter()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            if self.average is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(list(self.average.parameters()), list(self.model.parameters()),
                                         1.0 - cfg.policy_ema)
            t["optimizer"] += time.perf_counter() - t0
        n_tok = norms["num_tokens"]
        if cfg.step_stats:  # of the step's last optimizer step
            m.update(self._step_stats())
        m.update({"loss": loss_sum, "entropy": ent_sum / n_tok, "tokens": int(ro.lengths.sum())})
        if ref_logp is not None:
            m["kl"] = kl_sum / n_tok
        m.update({f"time_{k}": v for k, v in t.items()})
        return m

    # ----------------------------------------------------------------- the run
    def train(self) -> dict:
        """Run to ``cfg.steps``; write metrics, checkpoints, plot and summary under ``cfg.out``."""
        cfg = self.cfg
        out = Path(cfg.out) if cfg.out else None
        metrics_file = None
        self._session_start = time.perf_counter()
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            kept = []
            if cfg.resume and (out / "metrics.jsonl").exists():  # drop rows written after the checkpoint
                kept = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
                kept = [r for r in kept if r["step"] <= self.step]
            self.metrics = kept
            metrics_file = open(out / "metrics.jsonl", "w")
            for r in kept:
                metrics_file.write(json.dumps(r) + "\n")
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress, desc="rl", unit="step")
        try:
            while self.step < cfg.steps:
                m = self.rl_step()
                self.step += 1
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    m["eval_accuracy"] = evaluate(self.result_model, self.tokenizer, self.task, cfg.max_new_tokens)
                self.metrics.append(m)
                if metrics_file:
                    metrics_file.write(json.dumps(m) + "\n")
                    metrics_file.flush()
                bar.update(1)
                bar.set_postfix(reward=f"{m['reward_mean']:.3f}", kl=f"{m.get('kl', float('nan')):.4f}")
                if out is not None and cfg.save_every and self.step % cfg.save_every == 0:
                    self.save(out / "checkpoint")
        finally:
            bar.close()
            if metrics_file:
                metrics_file.close()
        summary = {
            "accuracy_before": self.accuracy_before,
            "accuracy_after": evaluate(self.result_model, self.tokenizer, self.task, cfg.max_new_tokens),
            "steps": self.step,
            "rl_seconds": self.rl_seconds,
            "warmstart": self.warmstart,
            "optimizer": cfg.optimizer,
            "lr": self.lr,
            "loss": cfg.loss,
            "advantage": self.advantage,
            "seed": cfg.seed,
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if out is not None:
            self.save(out / "checkpoint")
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            if not missing_dependency():
                plot_metrics(self.metrics, out / "curves.png")
        self.rl_seconds_before, self._session_start = summary["rl_seconds"], None
        return summary
