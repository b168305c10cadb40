"""The PyTorch Lightning recipe of docs/trainers.md: a signopt optimizer (with a scheduler)
returned from ``configure_optimizers`` trains, and ``Trainer.fit(ckpt_path=...)`` resumes from a
Lightning checkpoint to the same final parameters, bit for bit, as an uninterrupted run."""
from __future__ import annotations

import pytest
import torch

import signopt

L = pytest.importorskip("lightning", reason="the Lightning recipe needs lightning (pip install lightning)")

BATCHES_PER_EPOCH, EPOCHS = 4, 2


class _Module(L.LightningModule):
    def __init__(self, opt_cls, opt_kw: dict) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        self.opt_cls, self.opt_kw = opt_cls, opt_kw

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = self.opt_cls(self.parameters(), **self.opt_kw)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=BATCHES_PER_EPOCH * EPOCHS)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _loader() -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(8 * BATCHES_PER_EPOCH, 16, generator=gen),
                                          torch.randn(8 * BATCHES_PER_EPOCH, 1, generator=gen))
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)


def _trainer(root, checkpoints: bool) -> "L.Trainer":
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_epochs=1, save_top_k=-1)] \
        if checkpoints else []
    return L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                     enable_checkpointing=checkpoints, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=root)


@pytest.mark.parametrize("opt_cls,opt_kw", [(signopt.Lion, dict(lr=1e-2, weight_decay=0.1)),
                                            (signopt.StoSignSGD, dict(lr=1e-2, seed=3, state_dtype="bf16"))])
def test_lightning_trains_and_resumes_bit_identically(tmp_path, opt_cls, opt_kw) -> None:
    full = _Module(opt_cls, opt_kw)
    before = [p.detach().clone() for p in full.parameters()]
    trainer = _trainer(tmp_path / "full", checkpoints=True)
    trainer.fit(full, _loader())
    assert trainer.global_step == BATCHES_PER_EPOCH * EPOCHS
    assert isinstance(trainer.optimizers[0], opt_cls)
    assert any(not torch.equal(p, q) for p, q in zip(full.parameters(), before))
    ckpt = tmp_path / "full" / f"epoch=0-step={BATCHES_PER_EPOCH}.ckpt"
    saved = torch.load(ckpt, weights_only=False)["optimizer_states"][0]
    assert saved["signopt_schema"] == signopt.optimizer.SCHEMA_VERSION and saved["state"]

    resumed = _Module(opt_cls, opt_kw)
    trainer2 = _trainer(tmp_path / "resumed", checkpoints=False)
    trainer2.fit(resumed, _loader(), ckpt_path=str(ckpt))
    assert trainer2.global_step == BATCHES_PER_EPOCH * EPOCHS
    for p, q in zip(resumed.parameters(), full.parameters()):
        assert torch.equal(p, q)
