"""Policy models: the built-in tiny Qwen2 with a character tokenizer, loading from a local path,
and per-token log-probabilities of completions through the chunked LM-head path."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from .logprob import chunked_logprobs, logprobs_from_logits
from .tokenizer import char_tokenizer


def tiny_model(tokenizer, *, hidden: int = 128, layers: int = 4, heads: int = 4, intermediate: int = 384,
               max_positions: int = 64, seed: int = 0) -> PreTrainedModel:
    """A Qwen2 causal LM of about 0.9M parameters (tied embeddings) built from a config."""
    cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(cfg)


def load_policy(path: str | None, seed: int = 0):
    """(model, tokenizer): from a local ``from_pretrained`` folder, or the built-in tiny model."""
    if path is None:
        tok = char_tokenizer()
        return tiny_model(tok, seed=seed), tok
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"model={path!r}: the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding (as ``generate`` assigns them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logprobs(
    model: PreTrainedModel,
    sequences: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunked: bool = True,
) -> tuple[Tensor, Tensor]:
    """log π(y_t | prefix) and the entropy at each completion position → ``[B, T_c]`` each (zero
    where ``completion_mask`` is False); only valid positions reach the LM head.

    The chunked path is used at every vocabulary size: at the built-in model's ~100-token vocabulary
    its forward + backward measured the same as the plain ``log_softmax`` path (a single chunk; the
    recomputed logits are negligible next to the decoder), so there is no size switch."""
    head = model.get_output_embeddings()
    if getattr(model.config, "final_logit_softcapping", None) or getattr(model.config, "logit_scale", None):
        chunked = False  # the LM head output is transformed after the linear layer
    targets = sequences[:, prompt_len:]
    valid = completion_mask.bool()
    if chunked:
        hidden = model.get_decoder()(
            input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask)
        ).last_hidden_state[:, prompt_len - 1 : -1]
        logp, ent = chunked_logprobs(hidden[valid], head.weight, targets[valid], head.bias, temperature=temperature)
    else:
        logits = model(input_ids=sequences, attention_mask=attention_mask,
                       position_ids=position_ids(attention_mask)).logits[:, prompt_len - 1 : -1]
        logp, ent = logprobs_from_logits(logits[valid], targets[valid], temperature)
    out_lp = torch.zeros(targets.shape, dtype=logp.dtype, device=logp.device).masked_scatter(valid, logp)
    out_ent = torch.zeros(targets.shape, dtype=ent.dtype, device=ent.device).masked_scatter(valid, ent)
    return out_lp, out_ent
