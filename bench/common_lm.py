"""Shared helpers for the low-precision benchmarks: an offline byte-level corpus (the Python
standard library's own top-level ``*.py`` files), a small randomly initialised Llama, batching,
held-out evaluation and a machine banner.

The split is fixed by file: sorted file list, every 10th file (index % 10 == 0) is held out.
"""
from __future__ import annotations

import glob
import os
import platform
import sysconfig

import torch
from torch import Tensor

VOCAB = 256  # byte-level tokens


def machine_banner() -> str:
    """Torch version, thread count and CPU model of this machine (from /proc/cpuinfo)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"torch {torch.__version__} | threads {torch.get_num_threads()} | cpu {cpu!r} | "
            f"logical cpus {os.cpu_count()} | python {platform.python_version()}")


def stdlib_corpus() -> tuple[Tensor, Tensor, dict]:
    """(train bytes, held-out bytes, info) as uint8 tensors from the stdlib's top-level .py files."""
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(root, "*.py")))
    train, held = [], []
    for i, path in enumerate(files):
        with open(path, "rb") as f:
            data = f.read()
        (held if i % 10 == 0 else train).append(data)
    tr = torch.frombuffer(bytearray(b"".join(train)), dtype=torch.uint8).clone()
    ho = torch.frombuffer(bytearray(b"".join(held)), dtype=torch.uint8).clone()
    info = {"root": root, "files": len(files), "train_files": len(train), "heldout_files": len(held),
            "train_bytes": tr.numel(), "heldout_bytes": ho.numel()}
    return tr, ho, info


def build_llama(d_model: int = 128, n_layers: int = 4, n_heads: int = 4, d_ff: int = 384,
                seq_len: int = 128, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A randomly initialised byte-level ``transformers`` Llama (untied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=d_model, intermediate_size=d_ff,
                      num_hidden_layers=n_layers, num_attention_heads=n_heads,
                      num_key_value_heads=n_heads, max_position_embeddings=seq_len,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype)
    model.config.use_cache = False
    return model


def n_params(model: torch.nn.Module) -> int:
    """Number of parameter elements."""
    return sum(p.numel() for p in model.parameters())


def batch_at(data: Tensor, batch: int, seq_len: int, gen: torch.Generator) -> Tensor:
    """``batch`` random windows of ``seq_len + 1`` bytes as int64 token ids."""
    starts = torch.randint(0, data.numel() - seq_len - 1, (batch,), generator=gen)
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    return data[idx].to(torch.int64)


def lm_loss(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """Mean next-byte cross-entropy (nats) of ``tokens[:, :-1] -> tokens[:, 1:]``."""
    logits = model(input_ids=tokens[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                             tokens[:, 1:].reshape(-1))


def fixed_eval_batches(data: Tensor, n_batches: int, batch: int, seq_len: int,
                       seed: int = 1234) -> list[Tensor]:
    """A fixed list of held-out batches (same for every run)."""
    gen = torch.Generator().manual_seed(seed)
    return [batch_at(data, batch, seq_len, gen) for _ in range(n_batches)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[Tensor]) -> float:
    """Mean held-out loss over ``batches``."""
    was = model.training
    model.eval()
    total = sum(float(lm_loss(model, b)) for b in batches) / len(batches)
    model.train(was)
    return total
