"""Policy models: the built-in tiny Qwen2 with a character tokenizer, loading from a local path,
and per-token log-probabilities of completions through the chunked LM-head path."""

from __future__ import annotations

import inspect

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
    # use_kernels=False: the plain torch layers. transformers 5 swaps in Hub kernels by default
    # (other numerics, code from the Hub) and fails where the `kernels` package is missing.
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                 use_kernels=False)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"model={path!r}: the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding (as ``generate`` assigns them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _cache_keyword(decoder) -> str | None:
    """The decoder's KV-cache argument (``cache`` in newer transformers, ``past_key_values``
    before), or None when its forward takes neither."""
    params = inspect.signature(decoder.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def decoder_hidden(model: PreTrainedModel, sequences: Tensor, attention_mask: Tensor, prompt_len: int,
                   share_prompts: bool = True) -> Tensor:
    """Final hidden states at positions ``prompt_len − 1 … L − 2`` (the ones that predict the
    completion tokens) → ``[B, T_c, H]``.

    With ``share_prompts``, rows whose prompt (ids and mask) is identical — the G rollouts of a
    group — share one prompt forward: the unique prompts run once with a KV cache, the cache rows
    are gathered back to the B rows, and only the completion tokens run per row. Causal attention
    makes the prompt's states independent of the completion, so this is the same function (equal
    up to fp32 summation order) at a fraction of the tokens; gradients flow through the gather.
    """
    decoder = model.get_decoder()
    keyword = _cache_keyword(decoder) if share_prompts else None
    positions = position_ids(attention_mask)
    if keyword is not None:
        key = torch.cat([sequences[:, :prompt_len], attention_mask[:, :prompt_len]], 1)
        unique, inverse = torch.unique(key, dim=0, return_inverse=True)
        if unique.shape[0] < sequences.shape[0]:
            p_ids, p_mask = unique[:, :prompt_len], unique[:, prompt_len:]
            prefix = decoder(input_ids=p_ids, attention_mask=p_mask, position_ids=position_ids(p_mask), use_cache=True)
            cache = getattr(prefix, "cache", None) or getattr(prefix, "past_key_values", None)
            if cache is not None and hasattr(cache, "reorder_cache"):
                cache.reorder_cache(inverse)
                rest = decoder(input_ids=sequences[:, prompt_len:], attention_mask=attention_mask,
                               position_ids=positions[:, prompt_len:], use_cache=False, **{keyword: cache})
                return torch.cat([prefix.last_hidden_state[inverse, -1:], rest.last_hidden_state[:, :-1]], 1)
    out = decoder(input_ids=sequences, attention_mask=attention_mask, position_ids=positions)
    return out.last_hidden_state[:, prompt_len - 1 : -1]


def completion_logprobs(
    model: PreTrainedModel,
    sequences: Tensor,
    attention_mask: Tensor,
    prompt_len: int,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunked: bool = True,
    share_prompts: bool = True,
) -> tuple[Tensor, Tensor]:
    """log π(y_t | prefix) and the entropy at each completion position → ``[B, T_c]`` each (zero
    where ``completion_mask`` is False); only valid positions reach the LM head, and rows with the
    same prompt share its forward (:func:`decoder_hidden`).

    The chunked path is used at every vocabulary size: at the built-in model's ~100-token vocabulary
    its forward + backward measured the same as the plain ``log_softmax`` path (a single chunk; the
    recomputed logits are negligible next to the decoder), so there is no size switch."""
    head = model.get_output_embeddings()
    targets = sequences[:, prompt_len:]
    valid = completion_mask.bool()
    if any(getattr(model.config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        # the LM head output is transformed after the linear layer: the model's own full path
        logits = model(input_ids=sequences, attention_mask=attention_mask,
                       position_ids=position_ids(attention_mask)).logits[:, prompt_len - 1 : -1]
        logp, ent = logprobs_from_logits(logits[valid], targets[valid], temperature)
    else:
        hidden = decoder_hidden(model, sequences, attention_mask, prompt_len, share_prompts)[valid]
        if chunked:
            logp, ent = chunked_logprobs(hidden, head.weight, targets[valid], head.bias, temperature=temperature)
        else:
            logp, ent = logprobs_from_logits(head(hidden), targets[valid], temperature)
    out_lp = torch.zeros(targets.shape, dtype=logp.dtype, device=logp.device).masked_scatter(valid, logp)
    out_ent = torch.zeros(targets.shape, dtype=ent.dtype, device=ent.device).masked_scatter(valid, ent)
    return out_lp, out_ent
