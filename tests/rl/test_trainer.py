import json

import pytest
import torch

from signopt.rl.cli import main
from signopt.rl.config import config_from
from signopt.rl.modeling import tiny_model
from signopt.rl.plotting import missing_dependency, plot_metrics
from signopt.rl.tasks import AdditionTask
from signopt.rl.tokenizer import char_tokenizer
from signopt.rl.trainer import Trainer
from signopt.rl.warmstart import warm_start


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """A small Qwen2 + character tokenizer, briefly supervised on 1-digit addition so that sampled
    rewards are mixed, saved for from_pretrained."""
    path = tmp_path_factory.mktemp("tiny")
    tok = char_tokenizer()
    model = tiny_model(tok, hidden=32, layers=1, heads=2, intermediate=64, seed=0)
    warm_start(model, tok, AdditionTask(digits=1, eval_size=8), target=1.0, max_steps=120, batch_size=32, lr=1e-2,
               eval_every=120, max_new_tokens=4, gen=torch.Generator().manual_seed(0))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def small_config(tiny_path, **kw):
    base = dict(model=tiny_path, digits=1, steps=4, prompts_per_step=4, group_size=4, eval_size=8, eval_every=0,
                progress=False, lr=3e-3, kl_every=1)
    base.update(kw)
    return config_from(None, base)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


STRIP = ("time_",)


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(STRIP)} for r in rows]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("optimizer,extra", [("lion", {}), ("adamw", {"inner_epochs": 2, "micro_batch_prompts": 1}),
                                             ("stosignsgd", {"loss": "dapo", "dynamic_sampling": True}),
                                             ("lion", {"policy_ema": 0.5, "lr_schedule": "cosine", "warmup_steps": 1})])
def test_resume_equals_uninterrupted(tiny_path, tmp_path, optimizer, extra):
    """A run killed after its step-2 checkpoint and resumed from it equals an uninterrupted run."""
    straight = Trainer(small_config(tiny_path, optimizer=optimizer, out=str(tmp_path / "a"), **extra))
    straight.train()
    first = Trainer(small_config(tiny_path, optimizer=optimizer, out=str(tmp_path / "b"), save_every=2, **extra))
    step = first.rl_step

    def dies_at_step_3():
        if first.step == 2:
            raise Interrupted
        return step()

    first.rl_step = dies_at_step_3
    with pytest.raises(Interrupted):
        first.train()
    moved = params(first.model)
    resumed = Trainer(small_config(tiny_path, optimizer=optimizer, out=str(tmp_path / "b"),
                                   resume=str(tmp_path / "b" / "checkpoint"), **extra))
    assert resumed.step == 2
    resumed.train()
    a, b = params(straight.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = params(straight.result_model), params(resumed.result_model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [json.loads(l) for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert comparable(rows("a")) == comparable(rows("b")) and [r["step"] for r in rows("b")] == [1, 2, 3, 4]
    assert any(r["reward_std"] > 0 for r in rows("a")[2:])  # the resumed steps had a learning signal
    assert any(not torch.equal(params(straight.model)[k], v) for k, v in moved.items())  # and moved the weights


def test_micro_batch_split_does_not_change_the_update(tiny_path):
    runs = []
    for mb in (1, 3):
        tr = Trainer(small_config(tiny_path, optimizer="sgd", lr=0.5, steps=1, micro_batch_prompts=mb,
                                  prompts_per_step=8, group_size=8, reference_model=False))
        tr.train()
        runs.append(params(tr.model))
    initial = params(Trainer(small_config(tiny_path, steps=0, reference_model=False)).model)
    assert any(not torch.allclose(runs[0][k], initial[k]) for k in initial)
    assert all(torch.allclose(runs[0][k], runs[1][k], atol=1e-6) for k in runs[0])


def test_cli_smoke(tiny_path, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", tiny_path, "--digits", "1", "--steps", "3", "--prompts-per-step", "2", "--group-size", "4",
                 "--eval-size", "8", "--out", str(out), "--progress", "false", "--loss", "grpo",
                 "--loss-knobs", '{"beta": 0.04}', "--optimizer", "lion"]) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("reward_mean" in r and "kl" in r for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert {"accuracy_before", "accuracy_after"} <= summary.keys()
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "checkpoint" / "model" / "config.json").exists()


def test_cli_builtin_model_and_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('steps = 2\nprompts_per_step = 2\ngroup_size = 4\neval_size = 8\nwarmstart_target = 0.0\n'
                   'progress = false\ntask = "sorting"\nmax_new_tokens = 8\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config keys \\['stepz'\\]"):
        config_from(None, {"stepz": 3})
    with pytest.raises(ValueError, match="optimizer='lamb' is not supported"):
        config_from(None, {"optimizer": "lamb"})
    with pytest.raises(ValueError, match="group_size=0 must be ≥ 1"):
        config_from(None, {"group_size": "0"})
    with pytest.raises(ValueError, match="must end in .json or .toml"):
        config_from(str(tmp_path / "c.yaml"))
    with pytest.raises(SystemExit, match="loss='x'"):
        main(["train", "--loss", "x"])
    with pytest.raises(ValueError, match="warmstart_ema=1.0 must be in \\[0, 1\\)"):
        config_from(None, {"warmstart_ema": "1.0"})
    with pytest.raises(ValueError, match="optimizer_kwargs must be a mapping of constructor arguments other than"):
        config_from(None, {"optimizer_kwargs": {"lr": 1.0}})
    with pytest.raises(SystemExit, match="--optimizer-kwargs must be a JSON object"):
        main(["train", "--optimizer-kwargs", "{betas"])


def test_optimizer_kwargs_reach_the_optimizer(tiny_path):
    tr = Trainer(small_config(tiny_path, steps=0, optimizer_kwargs={"betas": [0.95, 0.98]}))
    assert tr.optimizer.param_groups[0]["betas"] == (0.95, 0.98)


def test_warm_start_ema_keeps_the_average():
    """ema=0.5 over one step leaves θ = (θ₀ + θ₁)/2, θ₁ being the raw weights after the step, and
    reports the accuracy of exactly those weights."""
    from signopt.rl.rollout import evaluate

    tok = char_tokenizer()
    task = AdditionTask(digits=1, eval_size=8)

    def run(ema):
        model = tiny_model(tok, hidden=32, layers=1, heads=2, intermediate=64, seed=0)
        out = warm_start(model, tok, task, target=1.0, max_steps=1, batch_size=8, lr=1e-2, eval_every=1,
                         max_new_tokens=4, gen=torch.Generator().manual_seed(0), ema=ema)
        return model, out

    theta0 = tiny_model(tok, hidden=32, layers=1, heads=2, intermediate=64, seed=0).state_dict()
    raw, _ = run(0.0)
    avg, out = run(0.5)
    for k, v in avg.state_dict().items():
        torch.testing.assert_close(v, (theta0[k] + raw.state_dict()[k]) / 2, rtol=0, atol=1e-7)
    assert out["steps"] == 1 and out["accuracy"] == evaluate(avg, tok, task, 4)
    with pytest.raises(ValueError, match="warmstart_ema=1.0 must be in"):
        warm_start(avg, tok, task, target=1.0, max_steps=1, batch_size=8, lr=1e-2, eval_every=1, max_new_tokens=4,
                   gen=torch.Generator(), ema=1.0)


@pytest.mark.parametrize("extra", [
    {"advantage": "mc_grpo"}, {"advantage": "opo", "loss": "gtpo"}, {"loss": "hapo"}, {"loss": "trpa"},
    {"loss": "r2vpo", "r2vpo_eta": 1.0, "r2vpo_delta": 0.0, "inner_epochs": 2},
    {"loss": "dapo", "overlong_filter": True, "overlong_cache": 2}, {"loss": "nft", "chunked_logprobs": False},
    {"advantage": "dgpo"},
])
def test_trainer_runs_every_pathway(tiny_path, extra):
    tr = Trainer(small_config(tiny_path, steps=3, optimizer="adamw", **extra))
    tr.train()
    assert len(tr.metrics) == 3 and all(m["reward_mean"] >= 0 for m in tr.metrics)
    trained = [m for m in tr.metrics if not m.get("skipped")]
    assert trained and all(torch.isfinite(torch.tensor(m["loss"])) for m in trained)


def test_lr_schedules():
    from signopt.rl.optimizers import lr_factor

    assert [lr_factor("constant", s, 10, 2) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert [lr_factor("linear", s, 10, 2) for s in (0, 2, 6, 10)] == [0.5, 1.0, 0.5, 0.0]
    assert lr_factor("cosine", 2, 10, 2) == 1.0 and lr_factor("cosine", 6, 10, 2) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_schedule='step' is not supported; allowed values: constant, linear, cosine"):
        config_from(None, {"lr_schedule": "step"})


def test_trainer_applies_the_lr_schedule(tiny_path):
    tr = Trainer(small_config(tiny_path, steps=4, lr_schedule="linear", dynamic_sampling=False, loss_knobs={"beta": 0.1}))
    tr.train()
    lrs = [m["lr"] for m in tr.metrics]
    assert lrs == pytest.approx([3e-3 * f for f in (1.0, 0.75, 0.5, 0.25)])
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 * 0.25)


def test_policy_ema_is_the_result(tiny_path, tmp_path):
    """With policy_ema the run's result (evaluated, saved as model/) is the weight average, updated
    after every optimizer step: θ̄ = ema·θ̄ + (1−ema)·θ."""
    from transformers import AutoModelForCausalLM

    tr = Trainer(small_config(tiny_path, steps=0, policy_ema=0.75, loss_knobs={"beta": 0.1}, out=str(tmp_path / "r")))
    expected = params(tr.model)
    for _ in range(3):
        tr.rl_step()
        tr.step += 1
        expected = {k: 0.75 * v + 0.25 * w for (k, v), w in zip(expected.items(), params(tr.model).values())}
    got = params(tr.average)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-7)  # lerp rounds differently
    assert any(not torch.equal(got[k], v) for k, v in params(tr.model).items())
    tr.cfg.steps = 3
    summary = tr.train()
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "r" / "checkpoint" / "model", use_kernels=False)
    assert all(torch.equal(v, got[k]) for k, v in params(saved).items())
    assert summary["accuracy_after"] == evaluate_default(tr)


def evaluate_default(tr):
    from signopt.rl.rollout import evaluate

    return evaluate(tr.average, tr.tokenizer, tr.task, tr.cfg.max_new_tokens)


def test_r2vpo_dual_update_is_once_per_optimizer_step_and_split_invariant(tiny_path):
    """λ moves once per optimizer step from that step's ratios: the same λ for 1, 3 (uneven) and 8
    prompts per micro-batch, with 2 inner epochs (3 prompts per micro-batch used to crash)."""
    lams = []
    for mb in (8, 3, 1):
        tr = Trainer(small_config(tiny_path, steps=1, optimizer="sgd", lr=0.05, loss="r2vpo", inner_epochs=2,
                                  loss_knobs={"lam": 0.5}, r2vpo_eta=1.0, r2vpo_delta=0.01, prompts_per_step=8,
                                  group_size=8, micro_batch_prompts=mb, reference_model=False, temperature=1.0))
        tr.train()
        assert not tr.metrics[0].get("skipped")
        lams.append(tr.r2vpo_lam)
    # epoch 0 runs on the rollout policy (Var r ≈ 0, so λ drops by ≈ δ); epoch 1 adds Var r − δ
    assert lams[0] != 0.5 and lams[0] < 0.5
    assert lams[1] == pytest.approx(lams[0], abs=1e-6) and lams[2] == pytest.approx(lams[0], abs=1e-6)


def test_warm_start_shows_progress(capsys):
    tok = char_tokenizer()
    model = tiny_model(tok, hidden=32, layers=1, heads=2, intermediate=64, seed=0)
    warm_start(model, tok, AdditionTask(digits=1, eval_size=8), target=1.0, max_steps=4, batch_size=8, lr=1e-2,
               eval_every=2, max_new_tokens=4, gen=torch.Generator().manual_seed(0), progress=True)
    err = capsys.readouterr().err
    assert "warm start" in err and "4/4" in err and "acc=" in err


def test_step_stats_logged_and_plotted(tiny_path, tmp_path):
    """step_stats=True: every updating RL step logs its optimizer step's statistics (the update
    RMS equal to the parameters' own change), and curves.png gains their panels."""
    out = tmp_path / "s"
    tr = Trainer(small_config(tiny_path, steps=3, step_stats=True, weight_decay=0.1, out=str(out)))
    before = [p.detach().clone() for p in tr.model.parameters()]
    m = tr.rl_step()
    assert not m.get("skipped")
    delta = torch.cat([(p.detach() - b).reshape(-1).double() for p, b in zip(tr.model.parameters(), before)])
    assert m["opt/g0/update_rms"] == pytest.approx(float(delta.square().mean().sqrt()), rel=1e-5)
    assert m["opt/g0/nonfinite"] == 0 and 0.0 <= m["opt/g0/sign_flip_fraction"] <= 1.0
    assert m["opt/g0/absmax_m"] > 0
    tr.step += 1
    tr.train()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("opt/g0/update_rms" in r for r in rows if not r.get("skipped"))
    if not missing_dependency():
        assert (out / "curves.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="step_stats=True needs a signopt optimizer"):
        small_config(tiny_path, optimizer="adamw", step_stats=True)


def test_plot_draws_step_stats_panels(tmp_path, monkeypatch):
    """With opt/ metrics the figure has the four step-statistics panels, one curve per metric."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    rows = [{"step": i, "reward_mean": 0.1 * i, "opt/g0/update_rms": 1e-3, "opt/g0/sign_flip_fraction": 0.2,
             "opt/g0/nonfinite": 0, "opt/g0/absmax_m": 0.5, "opt/g1/absmax_m": 0.25} for i in range(1, 4)]
    drawn = {}
    savefig = plt.Figure.savefig

    def spy(fig, path, **kw):
        drawn.update({ax.get_title(): len(ax.get_lines()) for ax in fig.axes})
        savefig(fig, path, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    plot_metrics(rows, tmp_path / "c.png")
    assert drawn["update RMS"] == 1 and drawn["state absmax"] == 2 and drawn["reward"] == 1
    assert (tmp_path / "c.png").stat().st_size > 1000
