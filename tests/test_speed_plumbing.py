"""Device, thread pool, per-node seconds and progress plumbing (no timings are asserted)."""
from __future__ import annotations

import contextvars
import io
import json
import threading

import pytest
import torch
from torch import nn

import lipgraph
from tests.fixtures.reports import strip_seconds
from lipgraph.cli import main
from lipgraph.errors import InputError
from lipgraph.linalg import conv_norm
from lipgraph.linalg.device import norm_device, on_device
from lipgraph.linalg.parallel import parallel_map
from lipgraph.progress import LayerProgress
from tests.fixtures.zoo import ZOO

CUDA = torch.cuda.is_available()


# -- device ----------------------------------------------------------------------------------------------------
def test_device_cpu_is_the_default():
    model, x = ZOO["tiny_resnet"]()
    default = lipgraph.analyze(model, x, lower=False, cache=False)
    cpu = lipgraph.analyze(model, x, lower=False, cache=False, device="cpu")
    assert strip_seconds(cpu.to_dict()) == strip_seconds(default.to_dict())
    assert norm_device() == torch.device("cpu")  # the analysis' device does not leak


@pytest.mark.skipif(CUDA, reason="checks the error raised without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    model, x = ZOO["tiny_cnn"]()
    with pytest.raises(InputError, match="cuda"):
        lipgraph.analyze(model, x, lower=False, device="cuda")
    model_file = tmp_path / "m.py"
    model_file.write_text("import torch\nfrom torch import nn\nmodel = nn.Linear(2, 2)\ninput_shape = (1, 2)\n")
    assert main(["explain", str(model_file), "--no-lower", "--device", "cuda"]) == 2


@pytest.mark.parametrize("device", ["tpu", "cuda:x", 3.5])
def test_unknown_devices_are_refused(device):
    with pytest.raises(InputError):
        with on_device(device):
            pass


def test_device_context_reaches_worker_threads(torch_threads):
    torch_threads(2)
    with on_device("cpu"):
        assert list(parallel_map(lambda _: norm_device(), range(4))) == [torch.device("cpu")] * 4


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_analysis_matches_cpu():
    model, x = ZOO["tiny_resnet"]()
    cpu = lipgraph.analyze(model, x, lower=False, cache=False)
    gpu = lipgraph.analyze(model, x, lower=False, cache=False, device="cuda")
    assert gpu.bound.value == pytest.approx(cpu.bound.value, rel=1e-9)
    w = torch.randn(300, 300, 3, 3)
    with on_device("cuda"):
        b = conv_norm(w, (9, 9), padding=1)
    assert b.method == "fft-circular"  # exact on the GPU too (Gram-iteration screen, float64 recheck)
    assert b.value == pytest.approx(conv_norm(w, (9, 9), padding=1).value, rel=1e-9)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_model_on_the_gpu_with_an_input_on_the_cpu():
    model, x = ZOO["tiny_cnn"]()
    expected = lipgraph.analyze(model, x, cache=False).bound.value
    model = model.cuda()
    report = lipgraph.analyze(model, x, cache=False, device="cuda")
    assert report.bound.value == pytest.approx(expected, rel=1e-9) and report.lower.value <= report.bound.value
    penalty = lipgraph.lipschitz_penalty(model, x)
    penalty.backward()
    assert penalty.device.type == "cuda" and float(penalty) <= expected * (1 + 1e-6)


# -- thread pool -----------------------------------------------------------------------------------------------
def test_parallel_map_keeps_order_threads_and_context(torch_threads):
    torch_threads(2)
    var = contextvars.ContextVar("v", default="unset")
    var.set("caller")
    seen = list(parallel_map(lambda i: (i * i, var.get(), torch.get_num_threads()), range(10)))
    assert [s[0] for s in seen] == [i * i for i in range(10)]
    assert {s[1] for s in seen} == {"caller"}
    assert {s[2] for s in seen} == {1}  # n workers × 1 torch thread, not n × n
    assert torch.get_num_threads() == 2  # restored


def test_parallel_map_raises_in_order(torch_threads):
    torch_threads(2)
    def fn(i):
        if i == 3:
            raise ValueError("three")
        return i

    results = parallel_map(fn, range(6))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(results)
    results.close()
    assert torch.get_num_threads() == 2


def test_pool_gives_the_same_report(torch_threads):
    torch_threads(2)
    for name in ("tiny_resnet", "tiny_densenet", "shared_weights"):
        model, x = ZOO[name]()
        pooled = lipgraph.analyze(model, x, lower=False, cache=False)
        torch.set_num_threads(1)
        serial = lipgraph.analyze(model, x, lower=False, cache=False)
        torch.set_num_threads(2)
        assert strip_seconds(pooled.to_dict()) == strip_seconds(serial.to_dict()), name


def test_parallel_map_gives_the_threads_back_with_its_last_result(torch_threads):
    """A consumer that stops at the last result (``zip`` with a list, ``next``) runs on torch's threads again."""
    torch_threads(2)
    results = parallel_map(lambda _: torch.get_num_threads(), range(3))
    assert [next(results) for _ in range(3)] == [1, 1, 1]
    assert torch.get_num_threads() == 2
    results.close()


def test_fused_chain_norms_run_in_the_pool(torch_threads, monkeypatch):
    """conv → BatchNorm chains are most of a CNN's work: the pool's workers compute their norms (they once ran
    in the calling thread, one at a time: the rules' pool still held torch on one thread)."""
    import lipgraph.passes.fuse as fuse

    torch_threads(2)
    seen, original = [], fuse.fused_bound

    def spy(lg, chain, norm, structure=None):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return original(lg, chain, norm, structure)

    monkeypatch.setattr(fuse, "fused_bound", spy)
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(3) for m in (nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())])
    model[1].running_var.uniform_(0.5, 2.0)
    lipgraph.analyze(model.eval(), torch.zeros(1, 4, 6, 6), lower=False, cache=False)
    in_pool = [threads for name, threads in seen if name.startswith("lipgraph-norms")]
    assert in_pool == [1, 1, 1] and len(seen) == 3, seen  # fusion reads them from the records (``fused_norm``)
    assert torch.get_num_threads() == 2


def test_user_rules_run_in_the_calling_thread(torch_threads):
    torch_threads(2)
    threads = []

    def my_relu(ctx):
        threads.append(threading.current_thread())
        return lipgraph.certified(1.0, "slope")

    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU())
    lipgraph.analyze(model, torch.zeros(1, 3), lower=False, cache=False, rules={"relu": my_relu})
    assert threads == [threading.main_thread()] * 2


# -- seconds and progress --------------------------------------------------------------------------------------
def test_seconds_per_node_add_up():
    model, x = ZOO["tiny_resnet"]()
    report = lipgraph.analyze(model, x, lower=False, cache=False)
    leaves = [n for n in report.tree.walk() if not n.children]
    assert all(n.seconds >= 0 for n in report.tree.walk())
    assert report.tree.seconds == pytest.approx(sum(n.seconds for n in leaves), rel=1e-9)
    for node in report.tree.walk():
        if node.children and all(c.op is not None and not c.children for c in node.children) and node.calls == 1:
            assert node.seconds == pytest.approx(sum(c.seconds for c in node.children), rel=1e-9)

    def has_seconds(d):
        return isinstance(d["seconds"], float) and all(has_seconds(c) for c in d["children"])

    assert has_seconds(report.to_dict()["tree"])


def test_cli_timings_and_json_seconds(tmp_path, capsys):
    model_file = tmp_path / "m.py"
    model_file.write_text("import torch\nfrom torch import nn\n"
                          "model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU())\n"
                          "input_shape = (1, 2, 8, 8)\n")
    assert main(["explain", str(model_file), "--no-lower", "--no-cache", "--timings", "--width", "120"]) == 0
    out = capsys.readouterr().out
    assert "slowest layers" in out and "0 (Conv2d)" in out
    assert main(["explain", str(model_file), "--no-lower", "--no-cache", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all("seconds" in child for child in data["tree"]["children"])


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_on_a_terminal_only(monkeypatch):
    fake = FakeTerminal()
    monkeypatch.setattr("sys.stderr", fake)
    with LayerProgress(3, "bounding layers", delay=0.0) as bar:
        bar._timer.join()  # the bar has started
        for name in ("a", "b", "c"):
            bar.advance(name)
        bar.extend(1)
        bar.advance("d")
    assert "bounding layers" in fake.getvalue()
    quiet = FakeTerminal()
    monkeypatch.setattr("sys.stderr", quiet)
    with LayerProgress(3, "bounding layers", enabled=False, delay=0.0) as bar:
        bar.advance("a")
    assert quiet.getvalue() == "" and bar._timer is None


def test_no_progress_without_a_terminal(capsys):
    model, x = ZOO["tiny_cnn"]()
    lipgraph.analyze(model, x, lower=False, cache=False)
    assert capsys.readouterr().err == ""
    with LayerProgress(2, "x", delay=0.0) as bar:
        assert bar._timer is None


def test_threads_are_restored_after_a_failing_rule(torch_threads):
    torch_threads(2)
    def broken(ctx):
        raise lipgraph.errors.RuleError("broken on purpose")

    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    with pytest.raises(lipgraph.errors.RuleError) as caught:
        lipgraph.analyze(model, torch.zeros(1, 3), lower=False, cache=False, rules={"relu": broken})
    assert torch.get_num_threads() == 2 and caught.value is not None  # even while the traceback is alive
