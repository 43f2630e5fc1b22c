"""lipgraph.cache: per-analysis memo and the on-disk cache (always in a tmp folder, never ~/.cache)."""
from __future__ import annotations

import contextvars
import json
import math
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import lipgraph
from tests.fixtures.reports import strip_seconds
from lipgraph import cache as cache_module
from lipgraph.bound import Kind, certified
from lipgraph.cache import NormCache, cache_dir, memoised, norm_cache, tensor_digest
from lipgraph.cli import main
from lipgraph.errors import UnsoundBoundError
from lipgraph.linalg.attained import attained_norm
from lipgraph.linalg import conv as conv_module
from lipgraph.linalg import conv_norm


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """Every test here caches into its own folder with its own key; ~/.cache and ~/.config are never touched."""
    monkeypatch.setenv("LIPGRAPH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LIPGRAPH_KEY_FILE", str(tmp_path / "config" / "cache.key"))
    return tmp_path / "cache"


def slow(value: float, calls: list, seconds: float = cache_module.MIN_SECONDS):
    def compute():
        calls.append(1)
        time.sleep(seconds)
        return certified(value, "test")
    return compute


def entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.json"))


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LIPGRAPH_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("LIPGRAPH_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "lipgraph"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "lipgraph"


def test_tensor_digest_is_by_content():
    a = torch.arange(6.0).reshape(2, 3)
    assert tensor_digest(a) == tensor_digest(a.clone()) == tensor_digest(a.T.contiguous().T)
    assert tensor_digest(a) != tensor_digest(a.reshape(3, 2))  # shape is part of it
    assert tensor_digest(a) != tensor_digest(a.double())  # so is the dtype
    b = a.clone()
    b[1, 2] += 1e-6
    assert tensor_digest(a) != tensor_digest(b)


def test_memo_computes_once_even_from_threads():
    calls: list = []
    with norm_cache(False):
        results = []
        def ask():
            results.append(memoised(("k", 1), slow(2.0, calls, 0.1)))

        threads = [threading.Thread(target=contextvars.copy_context().run, args=(ask,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(calls) == 1 and [b.value for b in results] == [2.0] * 8
    assert memoised(("k", 1), slow(3.0, calls)).value == 3.0  # outside an analysis: no memo


def test_failures_are_not_remembered():
    calls: list = []

    def failing():
        calls.append(1)
        raise RuntimeError("boom")

    with norm_cache(False):
        for _ in range(2):
            with pytest.raises(RuntimeError):
                memoised(("f",), failing)
    assert len(calls) == 2


def test_disk_round_trip(tmp_cache):
    calls: list = []
    with norm_cache() as cache:
        assert memoised(("w", 1), slow(1.5, calls)).value == 1.5
    assert cache.written == 1 and len(entries(tmp_cache)) == 1
    with norm_cache() as cache:
        b = memoised(("w", 1), slow(9.0, calls))
    assert (b.value, b.kind, b.method, cache.hits, len(calls)) == (1.5, Kind.CERTIFIED, "test", 1, 1)
    assert not list(tmp_cache.rglob(".tmp-*"))  # written by rename: no temporary file left


def test_fast_results_stay_in_memory(tmp_cache):
    with norm_cache():
        memoised(("fast",), lambda: certified(1.0, "test"))
    assert entries(tmp_cache) == []


def test_code_or_input_changes_miss(tmp_cache, monkeypatch):
    calls: list = []
    with norm_cache():
        memoised(("w", 1), slow(1.0, calls))
    with norm_cache():
        memoised(("w", 2), slow(2.0, calls))  # another input
    monkeypatch.setattr(cache_module, "_FINGERPRINT", ["other code"])
    with norm_cache():
        assert memoised(("w", 1), slow(3.0, calls)).value == 3.0  # another implementation: no stale value
    assert len(calls) == 3


@pytest.mark.parametrize("content", ["{not json", json.dumps({"key": "someone else's", "value": 1.0,
                                                               "kind": "certified", "method": "x", "exact": False}),
                                     json.dumps({"key": None, "value": -1})])
def test_corrupt_entries_are_misses_and_removed(tmp_cache, content):
    calls: list = []
    with norm_cache():
        memoised(("w",), slow(1.0, calls))
    (path,) = entries(tmp_cache)
    key = path.stem
    path.write_text(content.replace("someone else's", key[::-1]))
    with norm_cache():
        assert memoised(("w",), slow(2.0, calls)).value == 2.0
    assert len(calls) == 2 and json.loads(path.read_text())["value"] == 2.0


def test_concurrent_writers_leave_a_valid_entry(tmp_cache):
    caches = [NormCache(tmp_cache) for _ in range(6)]
    threads = [threading.Thread(target=c.get, args=(("same",), slow(4.0, []))) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (path,) = entries(tmp_cache)
    assert json.loads(path.read_text())["value"] == 4.0
    assert not list(tmp_cache.rglob(".tmp-*"))


def test_prune_keeps_the_most_recently_used(tmp_cache):
    cache = NormCache(tmp_cache, max_entries=10)
    for i in range(20):
        cache.get(("entry", i), slow(float(i), []))
    paths = entries(tmp_cache)
    for path in paths:  # entry i last used at time i
        i = int(json.loads(path.read_text())["value"])
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    NormCache(tmp_cache).get(("entry", 0), slow(0.0, []))  # a hit refreshes entry 0
    assert cache.prune() == 11
    kept = sorted(int(json.loads(p.read_text())["value"]) for p in entries(tmp_cache))
    assert kept == [0, 12, 13, 14, 15, 16, 17, 18, 19]


def test_unwritable_folder_costs_speed_not_results(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    calls: list = []
    with norm_cache(blocker) as cache:
        assert memoised(("w",), slow(1.0, calls)).value == 1.0
    assert cache.written == 0 and len(calls) == 1


# -- through analyze --------------------------------------------------------------------------------------------
def conv_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 24, 3, padding=1)
    model = nn.Sequential(conv, nn.BatchNorm2d(24), nn.ReLU(), conv, nn.Flatten(), nn.Linear(24 * 36, 5)).eval()
    return model, torch.randn(1, 24, 6, 6)


def test_identical_layers_and_second_runs_compute_nothing_again(tmp_cache, monkeypatch):
    computed: list = []
    real = conv_module._conv_norm
    monkeypatch.setattr(conv_module, "_conv_norm", lambda *a: computed.append(a[1]) or real(*a))
    monkeypatch.setattr(cache_module, "MIN_SECONDS", 0.0)  # store every result
    model, x = conv_net()
    first = lipgraph.analyze(model, x, lower=False)
    # the conv called twice is computed once; its conv+BN fold once (prefetched, then found by fusion)
    assert len(computed) == 2
    second = lipgraph.analyze(model, x, lower=False)
    assert len(computed) == 2 and strip_seconds(second.to_dict()) == strip_seconds(first.to_dict())
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 0.5  # a changed weight is a new key
    lipgraph.analyze(model, x, lower=False)
    assert len(computed) == 4


def test_cache_false_and_no_cache_write_nothing(tmp_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "MIN_SECONDS", 0.0)
    model, x = conv_net()
    lipgraph.analyze(model, x, lower=False, cache=False)
    assert not tmp_cache.exists()
    lipgraph.analyze(model, x, lower=False, cache=tmp_path / "elsewhere")
    assert entries(tmp_path / "elsewhere") and not tmp_cache.exists()
    model_file = tmp_path / "model.py"
    model_file.write_text("import torch\nfrom torch import nn\n"
                          "def build_model():\n    torch.manual_seed(0)\n"
                          "    return nn.Sequential(nn.Conv2d(24, 24, 3, padding=1), nn.ReLU())\n"
                          "def example_input():\n    return torch.zeros(1, 24, 6, 6)\n")
    assert main(["explain", str(model_file), "--no-lower", "--no-cache", "--json"]) == 0
    assert not tmp_cache.exists()
    assert main(["explain", str(model_file), "--no-lower", "--json"]) == 0
    assert entries(tmp_cache)


def test_conv_norm_results_are_the_same_through_the_cache(tmp_cache, monkeypatch):
    monkeypatch.setattr(cache_module, "MIN_SECONDS", 0.0)
    w = torch.randn(8, 8, 3, 3)
    direct = conv_norm(w, (9, 9), padding=1, strategy="fft")
    for _ in range(2):
        with norm_cache():
            assert conv_norm(w, (9, 9), padding=1, strategy="fft") == direct


# -- an untrusted folder: authenticated entries, re-checked norms, unsound runs fail -----------------------------
def forge(path: Path, **changes) -> None:
    """Rewrite fields of an entry without touching its tag."""
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, **changes}))


def test_tampered_value_or_tag_is_rejected_and_recomputed(tmp_cache):
    calls: list = []
    with norm_cache():
        memoised(("w",), slow(1.0, calls))
    (path,) = entries(tmp_cache)
    for change in ({"value": 0.01}, {"tag": "0" * 64}, {"method": "exact"}, {"tag": None}):
        forge(path, **change)
        with norm_cache() as cache:
            assert memoised(("w",), slow(1.0, calls)).value == 1.0
        assert cache.hits == 0 and json.loads(path.read_text())["value"] == 1.0  # recomputed and rewritten
        if change.get("tag", "") is not None:  # a missing tag is a corrupt entry, the others forgeries
            assert cache.notes == ["1 entry of the disk cache failed authentication (edited, or written with "
                                   "another key): removed and recomputed"]
    assert len(calls) == 5


def test_another_key_is_another_cache(tmp_cache, tmp_path, monkeypatch):
    calls: list = []
    with norm_cache():
        memoised(("w",), slow(1.0, calls))
    monkeypatch.setenv("LIPGRAPH_KEY_FILE", str(tmp_path / "other" / "cache.key"))
    with norm_cache() as cache:
        memoised(("w",), slow(1.0, calls))
    assert len(calls) == 2 and cache.forged == 1


def test_missing_key_is_created_private(tmp_path):
    key = tmp_path / "config" / "cache.key"
    assert not key.exists()
    first = cache_module.cache_secret()
    assert key.stat().st_mode & 0o777 == 0o600 and len(first) == 32
    assert cache_module.cache_secret() == first  # read back, not remade
    assert not [p for p in key.parent.iterdir() if p.name.startswith(".tmp-key-")]
    assert cache_module.key_file() == key


def test_key_file_default_is_outside_the_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("LIPGRAPH_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cache_module.key_file() == tmp_path / "xdg" / "lipgraph" / "cache.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_module.key_file() == tmp_path / "home" / ".config" / "lipgraph" / "cache.key"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_key_others_can_read_or_write_turns_the_disk_cache_off(tmp_cache, tmp_path, mode):
    key = tmp_path / "config" / "cache.key"
    cache_module.cache_secret()
    key.chmod(mode)
    calls: list = []
    with norm_cache() as cache:
        assert memoised(("w",), slow(1.0, calls)).value == 1.0
    assert cache.directory is None and entries(tmp_cache) == [] and calls == [1]
    assert cache.notes == [f"disk cache off: the cache key file {key} is readable or writable by others (mode "
                           f"{mode:o}; chmod 600 it)"]


@pytest.mark.parametrize("content, problem", [("abc\n", "holds no key (64 hex digits); delete it to make a new one"),
                                              (None, "is not a regular file")])
def test_unusable_key_files_are_refused(tmp_path, content, problem):
    key = tmp_path / "config" / "cache.key"
    key.parent.mkdir()
    if content is None:
        key.mkdir(mode=0o700)
    else:
        key.write_text(content)
        key.chmod(0o600)
    assert NormCache(tmp_path / "cache").notes == [f"disk cache off: the cache key file {key} {problem}"]


def test_report_says_the_disk_cache_is_off(tmp_cache, tmp_path):
    cache_module.cache_secret()
    (tmp_path / "config" / "cache.key").chmod(0o644)
    model, x = conv_net()
    report = lipgraph.analyze(model, x, lower=False)
    assert any(n.startswith("disk cache off: the cache key file") for n in report.notes), report.notes


def forge_all_valid(folder: Path, scale: float) -> int:
    """Scale every entry's value and re-sign it with the user's key: a valid tag on a wrong value."""
    signer = NormCache(folder.parent)
    paths = entries(folder)
    for path in paths:
        entry = json.loads(path.read_text())
        bound = certified(entry["value"] * scale, entry["method"], exact=entry["exact"])
        path.write_text(json.dumps({**entry, "value": bound.value, "tag": signer._tag(entry["key"], bound)}))
    return len(paths)


def test_a_signed_but_wrong_norm_is_caught_by_power_steps(tmp_cache, monkeypatch):
    monkeypatch.setattr(cache_module, "MIN_SECONDS", 0.0)
    model, x = conv_net()
    first = lipgraph.analyze(model, x, lower=False)
    forged = forge_all_valid(tmp_cache / cache_module._LAYOUT, 0.01)
    assert forged == 2
    second = lipgraph.analyze(model, x, lower=False)
    assert second.bound == first.bound
    assert second.notes == [f"{forged} entries of the disk cache claimed a certified norm below one the operator "
                            "attains (a few power-method steps): removed and recomputed"]
    third = lipgraph.analyze(model, x, lower=False)  # rewritten, correct entries
    assert third.bound == first.bound and third.notes == []


@pytest.mark.parametrize("p", [1, 2, math.inf])
def test_power_steps_attain_at_most_the_norm(p):
    torch.manual_seed(1)
    W = torch.randn(7, 5, dtype=torch.float64)
    exact = torch.linalg.matrix_norm(W, {1: 1, 2: 2, math.inf: math.inf}[p]).item()
    attained = attained_norm(lambda v: v @ W.T, (5,), p, steps=10)
    assert 0.5 * exact < attained <= exact * (1 + 1e-12)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    conv = conv_norm(w, (6, 6), padding=1, p=p, strategy="dense" if p == 2 else "abs-sum").value
    attained = attained_norm(lambda v: torch.nn.functional.conv2d(v, w, padding=1), (3, 6, 6), p, steps=10)
    assert 0.3 * conv < attained <= conv * (1 + 1e-12)


def test_lower_above_certified_fails_the_run_and_drops_the_entries(tmp_cache, tmp_path, monkeypatch, capsys):
    """A forged entry that passes the checks (simulated: no re-check) still cannot certify: the attained lower
    bound exceeds it, the run fails naming the layers, and the entries it read are gone."""
    monkeypatch.setattr(cache_module, "MIN_SECONDS", 0.0)
    model_file = tmp_path / "model.py"
    model_file.write_text("import torch\nfrom torch import nn\n"
                          "def build_model():\n    torch.manual_seed(0)\n"
                          "    return nn.Sequential(nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(), nn.Flatten(), "
                          "nn.Linear(24 * 36, 5))\n"
                          "def example_input():\n    return torch.zeros(1, 24, 6, 6)\n")
    assert main(["explain", str(model_file), "--json"]) == 0
    good = json.loads(capsys.readouterr().out)["bound"]
    forge_all_valid(tmp_cache / cache_module._LAYOUT, 0.01)
    monkeypatch.setattr(cache_module, "RECHECK_TOLERANCE", math.inf)  # the forgery slips past the power steps
    assert main(["explain", str(model_file), "--json"]) == 2
    err = capsys.readouterr().err
    assert "lipgraph: error: unsound bound: the lower bound" in err and "exceeds the certified bound" in err
    assert "Norms used by these layers came from the disk cache: 0. Those entries were removed; rerun" in err, err
    assert entries(tmp_cache) == []
    assert main(["explain", str(model_file), "--json"]) == 0  # recomputed
    assert json.loads(capsys.readouterr().out)["bound"] == good


def test_an_unsound_rule_fails_the_api_without_the_cache():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU()).eval()
    with pytest.raises(UnsoundBoundError, match="No norm came from the disk cache: a rule is wrong"):
        lipgraph.analyze(model, torch.randn(1, 3), rules={"linear": lambda ctx: certified(1e-3, "wrong")})


@pytest.mark.parametrize("p", [1, 2, math.inf])
@pytest.mark.parametrize("geometry", [dict(stride=2, padding=1, groups=2), dict(padding=1, dilation=2,
                                                                                padding_mode="circular"),
                                      dict(padding=1, groups=4, padding_mode="reflect"),
                                      dict(stride=2, padding=1, transposed=True), dict(kernel=1),
                                      dict(kernel=5, stride=3, padding=2, padding_mode="replicate")])
def test_the_recheck_never_rejects_a_correct_conv_norm(p, geometry):
    """The re-check runs many steps here (converged): it stays below the certified norm of every geometry, so a
    correct entry is never thrown away."""
    torch.manual_seed(0)
    geometry = dict(geometry)
    k, groups, transposed = geometry.pop("kernel", 3), geometry.get("groups", 1), geometry.get("transposed", False)
    w = torch.randn(4, 4 // groups, k, k)  # (out, in/groups, k, k), or (in, out, k, k) transposed
    certified_norm = conv_norm(w, (9, 9), p=p, **geometry).value
    geo = conv_module._geometry(w, (9, 9), geometry.get("stride", 1), geometry.get("padding", 0),
                                geometry.get("dilation", 1), groups, geometry.get("padding_mode", "zeros"),
                                transposed, 0)
    q = conv_module._DUAL[p] if transposed else p
    attained = attained_norm(geo.linear_map(w), (w.shape[1] * groups, 9, 9), q, steps=30, dtype=torch.float32)
    assert 0.4 * certified_norm < attained <= certified_norm * (1 + cache_module.RECHECK_TOLERANCE)
