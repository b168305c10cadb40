"""Sampling completions with ``model.generate`` and turning them into training tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import GenerationConfig

from .tasks import Example, Task


@dataclass
class Rollouts:
    """``sequences[B, P + T]`` = left-padded prompt ‖ completion; ``completion_mask[B, T]`` is True
    up to and including the first EOS; ``truncated[B]`` marks completions without an EOS."""

    sequences: Tensor
    attention_mask: Tensor
    prompt_len: int
    completion_mask: Tensor
    truncated: Tensor
    texts: list[str]

    @property
    def completion_ids(self) -> Tensor:
        return self.sequences[:, self.prompt_len :]

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)

    def select(self, rows: Tensor) -> "Rollouts":
        """The rollouts at ``rows`` (a bool mask or an index tensor)."""
        idx = rows.nonzero().squeeze(1) if rows.dtype == torch.bool else rows
        return Rollouts(self.sequences[idx], self.attention_mask[idx], self.prompt_len, self.completion_mask[idx],
                        self.truncated[idx], [self.texts[i] for i in idx.tolist()])


def completion_masks(completions: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """(mask[B, T]: positions up to and including the first EOS; truncated[B]: no EOS at all)."""
    is_eos = completions == eos_id
    seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return ~seen_before, ~is_eos.any(-1)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, num_return: int, max_new_tokens: int, do_sample: bool,
             temperature: float = 1.0) -> Rollouts:
    """``num_return`` completions per prompt (rows grouped by prompt); sampling draws from the
    global torch RNG."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ids = enc["input_ids"].repeat_interleave(num_return, 0)
    attn = enc["attention_mask"].repeat_interleave(num_return, 0)
    # top_k=0 / top_p=1.0 switch the truncation warpers off: ``None`` would fall back to
    # transformers' global default top_k=50, so sampling would not follow the policy whose
    # log-probs the loss uses (and would pay a top-k per token).
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature if do_sample else None,
        top_k=0 if do_sample else None, top_p=1.0 if do_sample else None, use_cache=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=ids, attention_mask=attn, generation_config=gen_cfg)
    model.train(was_training)
    P = ids.shape[1]
    comp = out[:, P:]
    if comp.shape[1] < max_new_tokens:  # generation stopped early: pad to a fixed width
        pad = torch.full((comp.shape[0], max_new_tokens - comp.shape[1]), tokenizer.pad_token_id, dtype=comp.dtype)
        comp = torch.cat([comp, pad], 1)
    mask, truncated = completion_masks(comp, tokenizer.eos_token_id)
    comp = torch.where(mask, comp, tokenizer.pad_token_id)
    sequences = torch.cat([ids, comp], 1)
    attention = torch.cat([attn, mask.long()], 1)
    texts = tokenizer.batch_decode(torch.where(mask & (comp != tokenizer.eos_token_id), comp, tokenizer.pad_token_id),
                                   skip_special_tokens=True)
    return Rollouts(sequences, attention, P, mask, truncated, texts)


def score(task: Task, rollouts: Rollouts, examples: list[Example], num_return: int) -> Tensor:
    """Rewards ``[B]`` (float64) for rollouts grouped ``num_return`` per example."""
    return torch.tensor(
        [task.reward(text, examples[i // num_return].answer) for i, text in enumerate(rollouts.texts)],
        dtype=torch.float64,
    )


@torch.no_grad()
def evaluate(model, tokenizer, task: Task, max_new_tokens: int, batch_size: int = 256) -> float:
    """Greedy accuracy (mean reward) on the task's held-out examples."""
    examples = task.eval_examples()
    total = 0.0
    for s in range(0, len(examples), batch_size):
        chunk = examples[s : s + batch_size]
        ro = generate(model, tokenizer, [e.prompt for e in chunk], num_return=1, max_new_tokens=max_new_tokens,
                      do_sample=False)
        total += float(score(task, ro, chunk, 1).sum())
    return total / len(examples)
