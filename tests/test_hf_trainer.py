"""Drop-in use: a Hugging Face Trainer with ``optimizers=(signopt.Lion(...), None)`` trains a
tiny randomly initialised Llama and resumes from its checkpoint (``optimizer.pt`` is loaded
with ``torch.load(weights_only=True)``) to the same final parameters as an uninterrupted run."""
from __future__ import annotations

import pytest
import torch

import signopt

transformers = pytest.importorskip("transformers")

STEPS, SAVE_AT = 6, 3


class _Data(torch.utils.data.Dataset):
    """Fixed synthetic token sequences (no network, no tokenizer)."""

    def __init__(self, n: int = 32, length: int = 16, vocab: int = 64) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=gen)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone()}


def _trainer(out_dir: str, opt_cls=signopt.Lion, **opt_kw):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32,
                                   attention_dropout=0.0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    opt = opt_cls(model.parameters(), **opt_kw)
    args = transformers.TrainingArguments(
        output_dir=out_dir, max_steps=STEPS, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=1, save_strategy="steps", save_steps=SAVE_AT, report_to=[], use_cpu=True,
        seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant",
    )
    return transformers.Trainer(model=model, args=args, train_dataset=_Data(), optimizers=(opt, None))


@pytest.mark.parametrize("opt_cls,opt_kw", [
    (signopt.Lion, dict(lr=1e-3, weight_decay=0.1)),
    (signopt.StoSignSGD, dict(lr=1e-3, seed=3)),
])
def test_trainer_trains_and_resumes_bit_identically(tmp_path, opt_cls, opt_kw) -> None:
    full = _trainer(str(tmp_path / "full"), opt_cls, **opt_kw)
    result = full.train()
    losses = [h["loss"] for h in full.state.log_history if "loss" in h]
    assert len(losses) == STEPS and losses[-1] < losses[0]
    final = {k: v.detach().clone() for k, v in full.model.state_dict().items()}

    ckpt = tmp_path / "full" / f"checkpoint-{SAVE_AT}"
    assert (ckpt / "optimizer.pt").exists()
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert saved["signopt_schema"] == signopt.optimizer.SCHEMA_VERSION and saved["state"]

    resumed = _trainer(str(tmp_path / "resumed"), opt_cls, **opt_kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == STEPS
    # optimizer state was restored, not re-initialised
    any_p = next(iter(resumed.optimizer.state))
    assert resumed.optimizer.state[any_p]
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, final[k]), f"{k} differs after resume"
    assert result.global_step == STEPS
