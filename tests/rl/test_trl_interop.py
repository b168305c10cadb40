"""signopt optimizers driving TRL's GRPOTrainer on a tiny local model (no Hub access)."""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("trl") is None:
    print("tests/rl/test_trl_interop.py: trl is not installed (pip install trl); skipping")
    pytest.skip("trl is not installed (pip install trl)", allow_module_level=True)

from datasets import Dataset  # noqa: E402  (trl depends on datasets)
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import signopt  # noqa: E402
from signopt.rl.modeling import tiny_model  # noqa: E402
from signopt.rl.tokenizer import char_tokenizer  # noqa: E402


def char_code_reward(completions, **kwargs):
    """A reward that differs between different completions of one prompt (the untrained model's
    completions are all max length), so the step has a gradient."""
    return [float(sum(map(ord, c)) % 5) for c in completions]


def test_lion_drives_grpo_trainer(tmp_path):
    tok = char_tokenizer()
    model = tiny_model(tok, hidden=32, layers=1, heads=2, intermediate=64, seed=0)
    data = Dataset.from_list([{"prompt": f"{a}+{b}="} for a in range(3) for b in range(3)])
    lr = 1e-3
    optimizer = signopt.Lion(model.parameters(), lr=lr, betas=(0.9, 0.99))
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=4, max_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                      temperature=1.0, seed=0, disable_tqdm=True)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = GRPOTrainer(model=model, reward_funcs=char_code_reward, args=args, train_dataset=data,
                          processing_class=tok, optimizers=(optimizer, None))
    trainer.train()
    assert trainer.optimizer.optimizer is optimizer  # accelerate wraps the optimizer it was given
    assert optimizer.state_dict()["state"], "the signopt optimizer never stepped"
    moved = 0
    for name, p in model.named_parameters():
        delta = (p.detach() - before[name]).abs()
        # one Lion step with weight decay 0 moves each weight by exactly lr or not at all (fp32 weights)
        assert torch.all((delta < 1e-7) | ((delta - lr).abs() < 1e-6)), name
        moved += int((delta > 0).sum())
    assert moved > 0
