"""Supervised warm start: teacher-forced cross-entropy on prompt → answer⟨eos⟩ until held-out
greedy accuracy first reaches a target (measured, because it jumps rather than creeps).

The default measures the raw weights at a moderate learning rate (3e-4): the run stops in the
middle of the model's rise, which GRPO then carries on. With ``ema`` > 0 the accuracy is measured
on, and the run ends with, an exponential moving average of the weights (θ̄ ← ema·θ̄ + (1 − ema)·θ
after every step), which rises smoothly where the raw weights swing (at lr 1e-3 by ±0.05–0.1
between checks) but gave the RL phase less to build on (bench/results/rl_default.md).
"""

from __future__ import annotations

import copy

import torch
from tqdm import tqdm

from .modeling import completion_logprobs
from .rollout import evaluate
from .tasks import Task


def supervised_batch(tokenizer, examples, max_new_tokens: int):
    """(sequences, attention_mask, prompt_len, completion_mask) for prompt ‖ answer⟨eos⟩."""
    prompts = tokenizer([e.prompt for e in examples], return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False)
    answers = [tokenizer(e.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for e in examples]
    if max(map(len, answers)) > max_new_tokens:
        raise ValueError(f"max_new_tokens={max_new_tokens} is shorter than an answer plus EOS")
    comp = torch.full((len(examples), max_new_tokens), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(comp.shape, dtype=torch.bool)
    for i, a in enumerate(answers):
        comp[i, : len(a)] = torch.tensor(a)
        mask[i, : len(a)] = True
    seqs = torch.cat([prompts["input_ids"], comp], 1)
    attn = torch.cat([prompts["attention_mask"], mask.long()], 1)
    return seqs, attn, prompts["input_ids"].shape[1], mask


def warm_start(model, tokenizer, task: Task, *, target: float, max_steps: int, batch_size: int, lr: float,
               eval_every: int, max_new_tokens: int, gen: torch.Generator, ema: float = 0.0,
               progress: bool = False) -> dict:
    """Train until held-out accuracy ≥ ``target`` (checked every ``eval_every`` steps) or
    ``max_steps``; with ``ema`` the weight average is measured and copied into ``model`` at the
    end; ``progress`` shows a bar (steps out of ``max_steps``, the last accuracy). Returns
    {"steps", "accuracy"}."""
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"warmstart_ema={ema} must be in [0, 1)")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    params = list(model.parameters())
    average = copy.deepcopy(model) if ema else model
    avg_params = list(average.parameters())
    acc = evaluate(average, tokenizer, task, max_new_tokens)
    step = 0
    bar = tqdm(total=max_steps, disable=not progress, desc="warm start", unit="step")
    bar.set_postfix(acc=f"{acc:.3f}", target=target)
    while acc < target and step < max_steps:
        for _ in range(eval_every):
            seqs, attn, p_len, mask = supervised_batch(tokenizer, task.sample(batch_size, gen), max_new_tokens)
            logp, _ = completion_logprobs(model, seqs, attn, p_len, mask)
            loss = -logp.sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema:
                with torch.no_grad():
                    torch._foreach_lerp_(avg_params, params, 1.0 - ema)
            step += 1
            bar.update(1)
        acc = evaluate(average, tokenizer, task, max_new_tokens)
        bar.set_postfix(acc=f"{acc:.3f}", target=target)
    bar.close()
    if ema:
        with torch.no_grad():
            torch._foreach_copy_(params, avg_params)
    return {"steps": step, "accuracy": acc}
