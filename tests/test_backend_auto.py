"""``backend="auto"`` by the measured table (``signopt.backends.autotune``), tested on CPU.

On a real machine only CUDA measures (``backends.MEASURED``); here the same code runs with
``MEASURED = {"cpu": ("cpp", "torch")}`` and an injected timer, so the choice logic, the cache
and the in-place safety are deterministic. One test times for real (tiny lists) and one runs the
Triton candidate in the interpreter.
"""
from __future__ import annotations

import json
import logging

import pytest
import torch

import signopt
from signopt import backends as backend_registry
from signopt.backends import autotune
from signopt.rule import UpdateRule

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy


def cpp_or_skip():
    try:
        backend_registry.load("cpp")
    except backend_registry.BackendUnavailable as exc:
        pytest.skip(f"cpp backend unavailable: {exc}")


class FakeTimer:
    """Returns fixed seconds per candidate; runs the synthetic step once per sample."""

    def __init__(self, times: dict[str, float]):
        self.times = dict(times)
        self.calls: list[str] = []

    def __call__(self, name, step, device):
        step()
        self.calls.append(name)
        return self.times[name]


@pytest.fixture
def table(monkeypatch, tmp_path):
    """CPU measures cpp vs torch; the table lives in tmp_path; measuring is on."""
    cpp_or_skip()
    path = tmp_path / "auto_table.json"
    monkeypatch.setenv(autotune.TABLE_ENV, str(path))
    monkeypatch.delenv(autotune.MEASURE_ENV, raising=False)
    monkeypatch.setattr(backend_registry, "MEASURED", {"cpu": ("cpp", "torch")})
    return path


def use_timer(monkeypatch, times):
    timer = FakeTimer(times)
    monkeypatch.setattr(autotune, "default_timer", timer)
    return timer


def make_params(n=4, shape=(8, 16), seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for _ in range(n)]
    for p in ps:
        p.grad = torch.randn(shape, generator=gen)
    return ps


# ------------------------------------------------------------------ defaults
def test_cpu_auto_takes_cpp_without_measuring(monkeypatch, tmp_path):
    cpp_or_skip()
    path = tmp_path / "t.json"
    monkeypatch.setenv(autotune.TABLE_ENV, str(path))
    assert "cpu" not in backend_registry.MEASURED

    def boom(*a, **k):
        raise AssertionError("CPU auto must not measure")

    monkeypatch.setattr(autotune, "choose", boom)
    monkeypatch.setattr(autotune, "measure", boom)
    opt = signopt.Lion(make_params(), lr=1e-3)
    assert opt.backends == ["cpp"]
    assert not path.exists()


def test_explicit_backend_never_measures(table, monkeypatch):
    timer = use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.1})
    assert signopt.Lion(make_params(), backend="cpp").backends == ["cpp"]
    assert timer.calls == [] and not table.exists()


# ------------------------------------------------------------------ choice
@pytest.mark.parametrize("times,expected", [
    ({"cpp": 1.0, "torch": 0.5}, "torch"),   # clearly faster wins
    ({"cpp": 0.5, "torch": 1.0}, "cpp"),
    ({"cpp": 1.0, "torch": 0.97}, "cpp"),    # within the 5% margin: the static order's first
    ({"cpp": 1.0, "torch": 0.94}, "torch"),
])
def test_choice_follows_measured_times(table, monkeypatch, times, expected):
    use_timer(monkeypatch, times)
    ps = make_params()
    opt = signopt.Lion(ps, lr=1e-3)
    assert opt.backends == [expected]
    opt.step()
    assert opt.last_step_backends == [expected]
    entry, = json.loads(table.read_text())["entries"].values()
    assert entry["choice"] == expected and entry["times_s"] == times


def test_decide_unit():
    assert autotune.decide({"a": 2.0, "b": 1.0}, ["a", "b"]) == "b"
    assert autotune.decide({"a": 1.04, "b": 1.0}, ["a", "b"]) == "a"
    assert autotune.decide({"a": None, "b": 3.0}, ["a", "b"]) == "b"
    assert autotune.decide({"a": None, "b": None}, ["a", "b"]) is None
    assert autotune.decide({"a": 1.0, "b": 0.1, "c": 0.01}, ["a", "b"]) == "b"  # c is not a candidate


def test_keys_and_buckets():
    assert [autotune.bucket(n) for n in (0, 1, 3, 4, 7, 9, 2**20, 124_000_000)] == \
        [1, 1, 4, 4, 4, 16, 2**20, 4**13]
    r = UpdateRule(family="lion", state_dtype="fp8_e4m3", cautious=True)
    key = autotune.entry_key("dev", r, torch.bfloat16, 3_000_000, 150)
    assert key == "dev|lion-l1+cautious|bf16|fp8_e4m3|n4^11|t4^4"
    assert autotune.rule_key(UpdateRule(family="stochastic", base="adamw", envelope="row",
                                        param_rounding="stochastic")) == "sto-adamw-row+srparam"
    ps = [torch.zeros(10, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.complex64)]
    assert autotune.profile(ps) == (torch.bfloat16, 16, 2)
    shapes = autotune.synthetic_shapes(2**20, 256)
    assert len(shapes) == 256 and shapes[0] == (4, 1024)
    assert autotune.synthetic_shapes(10, 256) == [(1,)] * 10


# ------------------------------------------------------------------ in-place safety
class RecordingBackend:
    """A candidate that records which storages its steps touch."""

    def __init__(self, name):
        self.name = name
        self.ptrs: set[int] = set()

    def unsupported(self, rule, params):
        return None

    def prepare(self, rule, slots):
        backend = self

        class Prepared:
            def run(self, grads, values, contiguous):
                for s, g in zip(slots, grads):
                    backend.ptrs.add(s.param.data_ptr())
                    backend.ptrs.add(g.data_ptr())
                    backend.ptrs.update(t.data_ptr() for t in s.state.values())
                    s.param.add_(1.0)  # an in-place update, as a real backend does
                return None
        return Prepared()


def test_measures_on_copies_never_live_tensors(table):
    ps = make_params()
    rule = UpdateRule(family="lion")
    live = {p.data_ptr() for p in ps} | {p.grad.data_ptr() for p in ps}
    before = [(p.detach().clone(), p.grad.clone()) for p in ps]
    cands = {"cpp": RecordingBackend("cpp"), "torch": RecordingBackend("torch")}
    timer = FakeTimer({"cpp": 1.0, "torch": 2.0})
    assert autotune.choose(cands, rule, ps, timer=timer) == "cpp"
    for b in cands.values():
        assert b.ptrs and not (b.ptrs & live)
    assert not (cands["cpp"].ptrs & cands["torch"].ptrs)  # each candidate has its own list
    for p, (v, g) in zip(ps, before):
        assert torch.equal(p, v) and torch.equal(p.grad, g)


def test_construction_leaves_params_and_state_alone(table, monkeypatch):
    use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.5})
    ps = make_params()
    before = [p.detach().clone() for p in ps]
    opt = signopt.StoSignSGD(ps, lr=1e-3, seed=3)
    assert opt.backends == ["torch"] and len(opt.state) == 0
    assert all(torch.equal(p, b) for p, b in zip(ps, before))
    # the measured backend steps exactly like an explicitly chosen one
    qs = [torch.nn.Parameter(b.clone()) for b in before]
    for p, q in zip(ps, qs):
        q.grad = p.grad.clone()
    ref = signopt.StoSignSGD(qs, lr=1e-3, seed=3, backend="torch")
    for _ in range(2):
        opt.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


def test_step_never_measures_and_table_is_reused(table, monkeypatch, caplog):
    timer = use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.5})
    ps = make_params()
    opt = signopt.Lion(ps, lr=1e-3)
    n = len(timer.calls)
    assert n == 2 * autotune.ROUNDS
    for _ in range(3):
        opt.step()
    assert len(timer.calls) == n
    timer.times = {"cpp": 0.1, "torch": 5.0}  # would flip the choice if measured again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="signopt"):
        again = signopt.Lion(make_params(seed=1), lr=1e-3)  # same profile: a table hit
    assert again.backends == ["torch"] and len(timer.calls) == n
    hits = [r.getMessage() for r in caplog.records if "backend='auto'" in r.getMessage()]
    assert len(hits) == 1 and "'torch'" in hits[0] and str(table) in hits[0]


def test_other_profile_is_a_miss(table, monkeypatch):
    timer = use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.5})
    signopt.Lion(make_params(), lr=1e-3)
    n = len(timer.calls)
    signopt.Lion(make_params(n=20, shape=(64, 64)), lr=1e-3)        # other size bucket
    signopt.Lion(make_params(), lr=1e-3, state_dtype="bf16")        # other state dtype
    signopt.Signum(make_params(), lr=1e-3)                          # other rule
    assert len(timer.calls) == 4 * n
    assert len(json.loads(table.read_text())["entries"]) == 4


def test_stale_versions_are_measured_again(table, monkeypatch):
    timer = use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.5})
    signopt.Lion(make_params(), lr=1e-3)
    data = json.loads(table.read_text())
    for e in data["entries"].values():
        e["versions"]["cpp"] = "cpp an-older-build"
    table.write_text(json.dumps(data))
    n = len(timer.calls)
    signopt.Lion(make_params(), lr=1e-3)
    assert len(timer.calls) == 2 * n


def test_one_warning_line_says_what_and_why(table, monkeypatch, caplog):
    use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.25})
    with caplog.at_level(logging.INFO, logger="signopt"):
        signopt.Lion(make_params(), lr=1e-3)
    lines = [r for r in caplog.records if r.name == "signopt" and "backend='auto'" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    msg = lines[0].getMessage()
    assert "chose 'torch'" in msg and "lion-l1" in msg and "4.00x faster than 'cpp'" in msg
    assert "synthetic" in msg and str(table) in msg


# ------------------------------------------------------------------ table file robustness
@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"format": "other"}',
                                     '{"format": "signopt-auto-table", "version": 99, "entries": {}}',
                                     '{"format": "signopt-auto-table", "version": 1, "entries": {"k": 3}}'])
def test_corrupted_table_warns_and_remeasures(table, monkeypatch, caplog, content):
    table.write_text(content)
    timer = use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.5})
    with caplog.at_level(logging.WARNING, logger="signopt"):
        opt = signopt.Lion(make_params(), lr=1e-3)
    assert opt.backends == ["torch"] and timer.calls
    warn = [r.getMessage() for r in caplog.records if "corrupted" in r.getMessage()]
    assert warn and str(table) in warn[0]
    data = json.loads(table.read_text())  # rewritten as a valid table
    assert data["format"] == autotune.TABLE_FORMAT and len(data["entries"]) == 1


def test_unwritable_table_still_chooses_once(monkeypatch, tmp_path, caplog):
    cpp_or_skip()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(autotune.TABLE_ENV, str(blocker / "auto.json"))  # parent is a file
    monkeypatch.setattr(backend_registry, "MEASURED", {"cpu": ("cpp", "torch")})
    monkeypatch.setattr(autotune, "_unsaved", {})
    timer = use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.5})
    with caplog.at_level(logging.WARNING, logger="signopt"):
        assert signopt.Lion(make_params(), lr=1e-3).backends == ["torch"]
    assert any("cannot write" in r.getMessage() for r in caplog.records)
    n = len(timer.calls)
    assert signopt.Lion(make_params(), lr=1e-3).backends == ["torch"]
    assert len(timer.calls) == n  # remembered in this process


# ------------------------------------------------------------------ modes
def test_measure_off_is_the_static_order(table, monkeypatch):
    monkeypatch.setenv(autotune.MEASURE_ENV, "0")
    timer = use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.1})
    assert signopt.Lion(make_params(), lr=1e-3).backends == ["cpp"]
    assert timer.calls == [] and not table.exists()


def test_table_mode_and_prefill_command(table, monkeypatch, capsys):
    monkeypatch.setenv(autotune.MEASURE_ENV, "table")
    timer = use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.5})
    ps = make_params()  # 512 elements in 4 tensors
    assert signopt.Lion(ps, lr=1e-3).backends == ["cpp"] and timer.calls == []  # miss: static
    argv = ["--device", "cpu", "--candidates", "cpp,torch", "--rules", "lion_l1,sign",
            "--pdtypes", "fp32", "--states", "fp32,bf16", "--sizes", "512/4,64K/16", "--rounds", "2"]
    assert autotune.main(argv) == 0
    out = capsys.readouterr().out
    entries = json.loads(table.read_text())["entries"]
    assert len(entries) == 6 and "-> torch" in out  # lion x 2 states x 2 sizes + signsgd x 2 sizes
    n = len(timer.calls)
    assert signopt.Lion(ps, lr=1e-3).backends == ["torch"] and len(timer.calls) == n  # table hit
    assert autotune.main(argv) == 0  # second run: everything already there
    assert len(timer.calls) == n and "already in the table" in capsys.readouterr().out
    assert autotune.main(argv + ["--force", "--budget-s", "0"]) == 0  # budget spent at once
    assert len(timer.calls) == n


def test_distributed_miss_takes_static_order(table, monkeypatch):
    monkeypatch.setattr(autotune, "_distributed", lambda: True)
    timer = use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.5})
    assert signopt.Lion(make_params(), lr=1e-3).backends == ["cpp"]
    assert timer.calls == [] and not table.exists()


def test_failing_candidate_is_recorded_not_chosen(table):
    class Broken(RecordingBackend):
        def prepare(self, rule, slots):
            class Prepared:
                def run(self, grads, values, contiguous):
                    raise RuntimeError("kernel exploded")
            return Prepared()

    cands = {"cpp": Broken("cpp"), "torch": backend_registry.load("torch")}
    ps = make_params()
    rule = UpdateRule(family="signum")
    timer = FakeTimer({"cpp": 0.1, "torch": 1.0})
    assert autotune.choose(cands, rule, ps, timer=timer) == "torch"
    entry, = json.loads(table.read_text())["entries"].values()
    assert entry["times_s"]["cpp"] is None and "kernel exploded" in entry["errors"]["cpp"]
    n = len(timer.calls)
    assert autotune.choose(cands, rule, ps, timer=timer) == "torch" and len(timer.calls) == n


def test_wrapper_auto_uses_the_table(table, monkeypatch):
    use_timer(monkeypatch, {"cpp": 1.0, "torch": 0.5})
    model = torch.nn.Linear(8, 4)
    opt = signopt.SignConversionWrapper(torch.optim.SGD(model.parameters(), lr=1e-2), lr=1e-3, seed=0)
    assert opt.backends == ["torch"]


# ------------------------------------------------------------------ real timing (tiny)
@pytest.mark.parametrize("rule,dtype", [
    (UpdateRule(family="sign"), torch.float32),
    (UpdateRule(family="lion", kappa="row_l2", state_dtype="bf16"), torch.bfloat16),
    (UpdateRule(family="stochastic", base="adamw", envelope="block", state_dtype="fp8_e4m3",
                fp8_min_numel=0, state_rounding="stochastic"), torch.float32),
    (UpdateRule(family="stochastic", base="momentum", envelope="row", cautious=True,
                param_rounding="stochastic"), torch.float16),
])
def test_real_measurement_cpp_vs_torch(table, rule, dtype):
    cands = {n: backend_registry.load(n) for n in ("cpp", "torch")}
    times, errors, shapes = autotune.measure(cands, rule, dtype, 3000, 3, torch.device("cpu"), rounds=2)
    assert errors == {} and all(t is not None and t > 0 for t in times.values())
    assert len(shapes) == 3 and shapes[0] == (1000,)


def test_triton_candidate_in_the_interpreter(table, monkeypatch):
    """The Triton candidate goes through the same synthetic path (interpreter on CPU)."""
    try:
        triton_backend = backend_registry.load("triton")
    except backend_registry.BackendUnavailable as exc:
        pytest.skip(f"triton unavailable: {exc}")
    if triton_backend.unsupported(UpdateRule(family="lion"), [torch.zeros(2)]) is not None:
        pytest.skip("the Triton kernels do not take CPU tensors here (TRITON_INTERPRET unset)")
    monkeypatch.setattr(backend_registry, "MEASURED", {"cpu": ("cpp", "triton")})
    monkeypatch.setattr(autotune, "ROUNDS", 1)
    monkeypatch.setattr(autotune, "WARMUPS", 1)
    timer = use_timer(monkeypatch, {"cpp": 1.0, "triton": 0.5})
    ps = [torch.nn.Parameter(torch.randn(3, 40)), torch.nn.Parameter(torch.randn(50))]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = signopt.StoSignSGD(ps, lr=1e-3, state_dtype="fp8_e4m3", fp8_min_numel=0, seed=1)
    assert opt.backends == ["triton"] and sorted(timer.calls) == ["cpp", "triton"]
    entry, = json.loads(table.read_text())["entries"].values()
    assert "errors" not in entry and entry["versions"]["triton"].startswith("triton ")


# ------------------------------------------------------------------ on a GPU (bench/gpu_check.sh)
@pytest.mark.cuda
def test_cuda_auto_measures_cpp_vs_triton(monkeypatch, tmp_path, caplog):
    """The real thing: CUDA params, both kernel backends, the default timer."""
    path = tmp_path / "auto_table.json"
    monkeypatch.setenv(autotune.TABLE_ENV, str(path))
    monkeypatch.delenv(autotune.MEASURE_ENV, raising=False)
    ps = [torch.nn.Parameter(torch.randn(256, 1024, device="cuda")) for _ in range(8)]
    for p in ps:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in ps]
    runnable = [n for n in backend_registry.MEASURED["cuda"]
                if backend_registry._runnable(n, UpdateRule(family="lion"), ps) is not None]
    with caplog.at_level(logging.INFO, logger="signopt"):
        opt = signopt.Lion(ps, lr=1e-4, weight_decay=0.1)
    assert opt.backends[0] in runnable
    assert all(torch.equal(p, b) for p, b in zip(ps, before)) and len(opt.state) == 0
    if len(runnable) < 2:
        pytest.skip(f"only {runnable} can run on this GPU: nothing to measure")
    entry, = json.loads(path.read_text())["entries"].values()
    assert entry["choice"] == opt.backends[0] and "errors" not in entry, entry
    assert all(t is not None and t > 0 for t in entry["times_s"].values())
    assert entry["device"] == torch.cuda.get_device_name()
    print(f"auto on {entry['device']}: {entry['times_s']} -> {entry['choice']}")
    opt.step()
    assert opt.last_step_backends == opt.backends


def test_measuring_error_falls_back_to_static_order(table, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("no luck")

    monkeypatch.setattr(autotune, "measure_entry", broken)
    with caplog.at_level(logging.WARNING, logger="signopt"):
        assert signopt.Lion(make_params(), lr=1e-3).backends == ["cpp"]
    assert any("could not measure" in r.getMessage() for r in caplog.records)


def test_backend_that_fails_to_load_is_skipped_by_auto(table, monkeypatch, caplog):
    real_load = backend_registry.load

    def load(name):
        if name == "cpp":
            raise AttributeError("module 'triton.language' has no attribute 'something'")
        return real_load(name)

    monkeypatch.setattr(backend_registry, "load", load)
    with caplog.at_level(logging.WARNING, logger="signopt"):
        assert signopt.Lion(make_params(), lr=1e-3).backends == ["torch"]
    assert any("failed to load" in r.getMessage() for r in caplog.records)
