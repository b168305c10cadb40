"""Drop-in use (the recipes of docs/trainers.md): a Hugging Face Trainer given
``optimizers=(signopt.Lion(...), None)`` or ``optimizer_cls_and_kwargs=(signopt.Lion, {...})``
trains a tiny randomly initialised Llama and resumes from its checkpoint (``optimizer.pt`` is
loaded with ``torch.load(weights_only=True)``) to the same final parameters as an uninterrupted
run; the Trainer's own Lion strings use AdamW's beta2 (the betas trap the page describes)."""
from __future__ import annotations

import sys
import types

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


def _trainer(out_dir: str, opt_cls=signopt.Lion, route: str = "optimizers", **opt_kw):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32,
                                   attention_dropout=0.0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    # optimizer_cls_and_kwargs: the Trainer puts TrainingArguments.weight_decay on its param groups
    wd = opt_kw.pop("weight_decay", 0.0) if route == "cls_and_kwargs" else 0.0
    args = transformers.TrainingArguments(
        output_dir=out_dir, max_steps=STEPS, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=1, save_strategy="steps", save_steps=SAVE_AT, report_to=[], use_cpu=True,
        seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant",
        weight_decay=wd,
    )
    if route == "cls_and_kwargs":
        return transformers.Trainer(model=model, args=args, train_dataset=_Data(),
                                    optimizer_cls_and_kwargs=(opt_cls, opt_kw))
    opt = opt_cls(model.parameters(), **opt_kw)
    return transformers.Trainer(model=model, args=args, train_dataset=_Data(), optimizers=(opt, None))


@pytest.mark.parametrize("route", ["optimizers", "cls_and_kwargs"])
@pytest.mark.parametrize("opt_cls,opt_kw", [
    (signopt.Lion, dict(lr=1e-3, weight_decay=0.1)),
    (signopt.StoSignSGD, dict(lr=1e-3, seed=3)),
])
def test_trainer_trains_and_resumes_bit_identically(tmp_path, opt_cls, opt_kw, route) -> None:
    full = _trainer(str(tmp_path / "full"), opt_cls, route, **opt_kw)
    result = full.train()
    losses = [h["loss"] for h in full.state.log_history if "loss" in h]
    assert len(losses) == STEPS and losses[-1] < losses[0]
    final = {k: v.detach().clone() for k, v in full.model.state_dict().items()}

    ckpt = tmp_path / "full" / f"checkpoint-{SAVE_AT}"
    assert (ckpt / "optimizer.pt").exists()
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert saved["signopt_schema"] == signopt.optimizer.SCHEMA_VERSION and saved["state"]

    resumed = _trainer(str(tmp_path / "resumed"), opt_cls, route, **opt_kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == STEPS
    # optimizer state was restored, not re-initialised
    any_p = next(iter(resumed.optimizer.state))
    assert resumed.optimizer.state[any_p]
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, final[k]), f"{k} differs after resume"
    assert result.global_step == STEPS


def test_cls_and_kwargs_takes_weight_decay_from_training_arguments(tmp_path) -> None:
    trainer = _trainer(str(tmp_path), signopt.Lion, "cls_and_kwargs", lr=1e-3, weight_decay=0.1,
                       betas=(0.9, 0.99), state_dtype="bf16")
    opt = trainer.create_optimizer()
    assert isinstance(opt, signopt.Lion)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # norms take no decay
    assert all(g["lr"] == 1e-3 and g["betas"] == (0.9, 0.99) for g in opt.param_groups)
    assert all(g["state_dtype"] == "bf16" for g in opt.param_groups)


def test_trainer_lion_strings_use_adamw_beta2(monkeypatch) -> None:
    """TrainingArguments(optim="lion_32bit") builds bitsandbytes' Lion with (adam_beta1,
    adam_beta2) = (0.9, 0.999); signopt.Lion's default is (0.9, 0.99). bitsandbytes is replaced
    by a stand-in module: only the arguments the Trainer would pass are checked."""
    bnb = types.ModuleType("bitsandbytes")
    bnb_optim = types.ModuleType("bitsandbytes.optim")
    for name in ("AdamW", "Lion", "RMSprop"):
        setattr(bnb_optim, name, type(name, (), {}))
    bnb.optim = bnb_optim
    monkeypatch.setitem(sys.modules, "bitsandbytes", bnb)
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", bnb_optim)
    trainer_optimizer = pytest.importorskip("transformers.trainer_optimizer")
    monkeypatch.setattr(trainer_optimizer, "is_bitsandbytes_available", lambda: True)
    for optim in ("lion_32bit", "lion_8bit", "paged_lion_32bit", "paged_lion_8bit"):
        args = transformers.TrainingArguments(output_dir="unused", optim=optim, report_to=[], use_cpu=True)
        cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(args)
        assert cls is bnb_optim.Lion and kwargs["betas"] == (0.9, 0.999), (optim, kwargs)
        fixed = transformers.TrainingArguments(output_dir="unused", optim=optim, adam_beta2=0.99,
                                               report_to=[], use_cpu=True)
        assert transformers.Trainer.get_optimizer_cls_and_kwargs(fixed)[1]["betas"] == (0.9, 0.99)
    assert signopt.Lion([torch.nn.Parameter(torch.zeros(1))]).defaults["betas"] == (0.9, 0.99)
