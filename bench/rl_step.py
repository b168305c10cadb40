"""Seconds per RL step and completion tokens per second for signopt.rl's default step
(8 prompts × 8 completions of ≤ 4 tokens, the built-in ~0.9M-parameter Qwen2, Lion at its default lr), split into
generation, log-probs, loss + backward and optimizer step, beside TRL's GRPOTrainer on the same
model, tokenizer, batch, optimizer and reward when ``trl`` is installed.

Both start from the same untrained weights (a warm start does not change the step's work) and
use a dense reward (the fraction of digits among the completion's characters) so that every step
has a learning signal. Contenders alternate in rounds; min and median over all measured steps.
Two comparisons: with the default's KL-to-reference penalty (β = 0.1: a reference forward every
step, on both sides) and without (β = 0).

    python bench/rl_step.py [--rounds 5] [--steps-per-round 20] [--warmup 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from signopt.rl.config import DEFAULT_LOSS_KNOBS, RLConfig, config_from
from signopt.rl.modeling import tiny_model
from signopt.rl.optimizers import default_lr
from signopt.rl.tasks import AdditionTask
from signopt.rl.tokenizer import char_tokenizer
from signopt.rl.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import provenance_line  # noqa: E402

PROMPTS, GROUP, MAX_NEW = 8, 8, 4


def digit_fraction(text: str) -> float:
    return sum(c.isdigit() for c in text) / max(len(text), 1)


class DenseAddition(AdditionTask):
    """2-digit addition prompts with the dense benchmark reward."""

    def reward(self, completion: str, answer: str) -> float:
        return digit_fraction(completion)


def signopt_contender(path: str, beta: float):
    cfg = config_from(None, dict(model=path, eval_size=8, progress=False, steps=10**9, loss_knobs={"beta": beta}))
    tr = Trainer(cfg)
    tr.task = DenseAddition(eval_size=8)

    def run(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            m = tr.rl_step()
            tr.step += 1
            m["wall"] = time.perf_counter() - t0
            out.append(m)
        return out

    return run


def trl_contender(path: str, tmp: str, beta: float):
    try:
        import trl
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    except ImportError as e:
        print(f"TRL comparison skipped: trl is not installed ({e}); `pip install trl` to include it")
        return None
    import signopt

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_kernels=False)
    tok = AutoTokenizer.from_pretrained(path)
    task = DenseAddition(eval_size=8)
    prompts = [e.prompt for e in task.sample(4096, torch.Generator().manual_seed(0))]

    def reward(completions, **_):
        return [digit_fraction(c) for c in completions]

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    cfg = trl.GRPOConfig(
        output_dir=tmp, per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
        max_completion_length=MAX_NEW, gradient_accumulation_steps=1, beta=beta, temperature=RLConfig().temperature, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=10**6, max_steps=10**6, learning_rate=default_lr("lion"),
        gradient_checkpointing=False, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    opt = signopt.Lion(model.parameters(), lr=default_lr("lion"))
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=cfg, processing_class=tok,
                              train_dataset=Dataset.from_dict({"prompt": prompts}), optimizers=(opt, None),
                              callbacks=[StepTimer()])
    def run(n: int) -> list[float]:
        start = len(times)
        trainer.args.max_steps = n
        trainer.train()
        return times[start:]

    return run, trl.__version__


def main() -> None:
    ap = argparse.ArgumentParser(description="RL step time: signopt.rl vs TRL GRPOTrainer")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-per-round", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(provenance_line())
    # the default's KL penalty (a reference forward every step) and none, on both sides
    for beta in (DEFAULT_LOSS_KNOBS["grpo"]["beta"], 0.0):
        compare(args, beta)


def compare(args, beta: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tok = char_tokenizer()
        model = tiny_model(tok, seed=0)
        model.save_pretrained(f"{tmp}/model")
        tok.save_pretrained(f"{tmp}/model")
        n_params = sum(p.numel() for p in model.parameters())
        ours = signopt_contender(f"{tmp}/model", beta)
        trl_run = trl_contender(f"{tmp}/model", f"{tmp}/trl", beta)
        torch.set_num_threads(args.threads)
        print(f"\n== KL beta {beta:g} on both sides ==\nmodel: Qwen2 {n_params / 1e6:.2f}M params; batch {PROMPTS} "
              f"prompts × {GROUP} completions of ≤ {MAX_NEW} tokens; sampling temperature {RLConfig().temperature:g}; "
              f"optimizer Lion lr {default_lr('lion'):g}; torch threads = {torch.get_num_threads()}")
        ours(args.warmup)
        if trl_run:
            trl_run[0](args.warmup)
        mine, theirs = [], []
        for _ in range(args.rounds):
            mine += ours(args.steps_per_round)
            if trl_run:
                theirs += trl_run[0](args.steps_per_round)
    walls = [m["wall"] for m in mine]
    tokens = sum(m["tokens"] for m in mine)
    print(f"signopt.rl: {len(walls)} steps, s/step min {min(walls):.4f} median {statistics.median(walls):.4f}; "
          f"{tokens / sum(walls):.0f} completion tokens/s")
    for k in ("generate", "logprobs", "loss_backward", "optimizer"):
        v = [m[f"time_{k}"] for m in mine]
        print(f"  {k:<14} min {min(v):.4f} median {statistics.median(v):.4f} s")
    if trl_run:
        print(f"TRL {trl_run[1]} GRPOTrainer: {len(theirs)} steps, s/step min {min(theirs):.4f} "
              f"median {statistics.median(theirs):.4f}")
        print(f"signopt.rl / TRL median step time: {statistics.median(walls) / statistics.median(theirs):.2f}")


if __name__ == "__main__":
    main()
