"""What a new user hits first (issue 18): attention labelled honestly, stubs that load and refuse, messages that are
right, outputs that keep their names, a process pool that stays quiet when run from stdin."""
from __future__ import annotations

import collections
import json
import math
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipgraph
from lipgraph.cli import main
from tests.test_errors import stub_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated(restore_default_registry, monkeypatch):
    """--rules files register into the default registry and put their folder on sys.path: undo both."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("helpers_h18", None)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- 1. ops that are not globally Lipschitz, whatever their spelling ----------------------------------------------
class _Call(nn.Module):
    def __init__(self, fn, **modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        for name, m in modules.items():
            self.add_module(name, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


SEQ = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(0))
NOT_LIPSCHITZ = {  # id -> (model, input, frontends, the op key named in the message)
    "nn.MultiheadAttention": (lambda: _Call(lambda m, x: m.att(x, x, x)[0],
                                            att=nn.MultiheadAttention(8, 2, batch_first=True)), SEQ,
                              ("fx", "export"), None),
    "F.scaled_dot_product_attention": (lambda: _Call(lambda m, x: F.scaled_dot_product_attention(x, x, x)), SEQ,
                                       ("fx", "export"), "multihead_attention"),
    "nn.TransformerEncoderLayer": (lambda: _Call(lambda m, x: m.enc(x),
                                                 enc=nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)), SEQ,
                                   ("fx", "export"), None),
    "einsum-attention": (lambda: _Call(lambda m, x: torch.einsum("bqd,bkd->bqk", x, x).softmax(-1) @ x), SEQ,
                         ("fx",), "einsum"),
    "cross-attention-keys": (lambda: _Call(lambda m, x: F.scaled_dot_product_attention(m.q.weight[None], x, x),
                                           q=nn.Linear(8, 3)), SEQ, ("fx",), "multihead_attention"),
    "exp": (lambda: _Call(lambda m, x: torch.exp(x)), SEQ, ("fx", "export"), "exp"),
    "sqrt-method": (lambda: _Call(lambda m, x: x.abs().sqrt()), SEQ, ("fx",), "sqrt"),
    "x**2": (lambda: _Call(lambda m, x: x ** 2), SEQ, ("fx", "export"), "pow"),
    "floor-div": (lambda: _Call(lambda m, x: x // 2), SEQ, ("fx",), "floor_divide"),
    "round": (lambda: _Call(lambda m, x: torch.round(x)), SEQ, ("fx",), "round"),
    "prod": (lambda: _Call(lambda m, x: x.prod(-1)), SEQ, ("fx",), "prod"),
    "outer": (lambda: _Call(lambda m, x: torch.outer(x[0, 0], x[0, 1])), SEQ, ("fx",), "outer"),
}


@pytest.mark.parametrize("case", sorted(NOT_LIPSCHITZ))
def test_not_globally_lipschitz_under_every_spelling(case: str) -> None:
    make, x, frontends, key = NOT_LIPSCHITZ[case]
    for frontend in frontends:
        with pytest.raises(lipgraph.NotLipschitzError) as info:
            lipgraph.analyze(make().eval(), x, frontend=frontend, lower=False, cache=False, unsupported="inf")
        msg = str(info.value)
        assert "is not globally Lipschitz: " in msg, (frontend, msg)
        if key:
            assert f"op {key!r}" in msg, (frontend, msg)
        assert "@lipgraph.rule" not in msg and "certified(" not in msg  # never a stub with a number


def test_attention_that_is_lipschitz_is_declined_not_refused() -> None:
    """Queries from the input, fixed keys and values: softmax then a fixed linear map, Lipschitz but without a
    rule. Reported as an op without a rule, whose stub overrides the built-in refusal and refuses in turn."""
    model = _Call(lambda m, x: F.scaled_dot_product_attention(x, m.k.weight[None], m.k.weight[None]),
                  k=nn.Linear(8, 5)).eval()
    with pytest.raises(lipgraph.UnsupportedOpsError) as info:
        lipgraph.analyze(model, SEQ, lower=False, cache=False)
    stub = stub_of(str(info.value))
    assert '@lipgraph.rule("multihead_attention", override=True)' in stub
    compile(stub, "<stub>", "exec")


def test_power_one_is_the_identity() -> None:
    model = nn.Sequential(nn.Linear(3, 3)).eval()
    report = lipgraph.analyze(_Call(lambda m, x: m.lin(x) ** 1, lin=model).eval(), torch.randn(1, 3), lower=False,
                              cache=False)
    exact = float(torch.linalg.matrix_norm(model[0].weight.detach().double(), 2))
    assert exact <= report.bound.value <= exact * (1 + 1e-5)


# -- 2. every kind of stub is a rules file that loads with --rules and refuses --------------------------------------
HELPERS = '''
import torch


def gate(x):
    return 2 * x


torch.fx.wrap("gate")
'''

STUB_MODELS = {  # kind -> (forward body, extra options, what @lipgraph.rule names, the op's stub label)
    "torch function": ("torch.cumsum(self.fc(x), 1)", [], '"cumsum"', "cumsum"),
    "tensor method": ("self.fc(x).cos()", [], '"cos"', "cos"),
    "nn module class": ("self.lrn(self.fc(x)[:, None])", [], "torch.nn.LocalResponseNorm",
                        "torch.nn.LocalResponseNorm"),
    "imported function": ("helpers_h18.gate(self.fc(x))", [], "gate", "gate"),
    "declined built-in rule": ("self.ln(self.fc(x))", ["--norm", "1"], '"layer_norm", override=True', "layer_norm"),
    "function of the model file": ("local_gate(self.fc(x))", [], "local_gate", "local_gate"),
}
STUB_MODEL = '''
import torch
from torch import nn
import helpers_h18


def local_gate(x):
    return 2 * x


torch.fx.wrap("local_gate")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.lrn = nn.LocalResponseNorm(2)
        self.ln = nn.LayerNorm(4)

    def forward(self, x):
        return {body}


def build_model():
    torch.manual_seed(0)
    return Net().eval()


input_shape = (1, 4)
'''


@pytest.mark.parametrize("kind", sorted(STUB_MODELS))
def test_each_kind_of_stub_loads_and_refuses(kind: str, tmp_path: Path, capsys) -> None:
    body, options, target, label = STUB_MODELS[kind]
    (tmp_path / "helpers_h18.py").write_text(HELPERS)
    model = tmp_path / "net.py"
    model.write_text(STUB_MODEL.format(body=body))
    code, _, err = run(capsys, "explain", str(model), "--no-lower", *options)
    assert code == 2 and "no rule" in err, err
    stub = stub_of(err.removeprefix("lipgraph: error: "))
    assert f"@lipgraph.rule({target})" in stub, stub
    assert "certified(1.0" not in stub and "raise NotImplementedError" in stub and "TODO" in stub
    compile(stub, "<stub>", "exec")
    if kind == "function of the model file":  # no rules file can import it: the stub goes into the model file
        assert "Paste it into" in err and "net.py" in err
        model.write_text(model.read_text() + "\n" + stub)
        code, _, err = run(capsys, "explain", str(model), "--no-lower", *options)
    else:
        assert "--rules my_rules.py" in err
        rules = tmp_path / "my_rules.py"
        rules.write_text(stub)
        code, _, err = run(capsys, "explain", str(model), "--no-lower", "--rules", str(rules), *options)
    assert code == 2 and "Traceback" not in err, err  # loaded, and refuses: nothing is certified
    assert f"NotImplementedError: {label}: replace this stub by a proven Lipschitz constant" in err, err
    assert "no rule" not in err


def test_a_completed_stub_certifies(tmp_path: Path, capsys) -> None:
    """Replacing the stub's raise by a proven constant (|cos'| ≤ 1) gives a certified bound."""
    (tmp_path / "helpers_h18.py").write_text(HELPERS)
    model = tmp_path / "net.py"
    model.write_text(STUB_MODEL.format(body="self.fc(x).cos()"))
    _, _, err = run(capsys, "explain", str(model), "--no-lower")
    stub = stub_of(err.removeprefix("lipgraph: error: "))
    rules = tmp_path / "my_rules.py"
    rules.write_text(re.sub(r"raise NotImplementedError\(.*\)", 'return lipgraph.certified(1.0, "|cos\'| <= 1")', stub))
    code, out, err = run(capsys, "explain", str(model), "--no-lower", "--rules", str(rules), "--json")
    assert code == 0, err
    assert json.loads(out)["kind"] == "certified"


# -- 4. messages ------------------------------------------------------------------------------------------------------
MODEL_FILE = "from torch import nn\n\ndef build_model():\n    return nn.Sequential({}, nn.ReLU()).eval()\n"
LINEAR_FILE = MODEL_FILE.format("nn.Linear(20, 5)")
CONV_FILE = MODEL_FILE.format("nn.Conv2d(3, 4, 3)")
EMBEDDING_FILE = '''
import torch
from torch import nn


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens):
        return self.head(self.embed(tokens))


def build_model():
    return Tagger().eval()


def example_input():
    return torch.randint(0, 50, (1, 7), generator=torch.Generator().manual_seed(0))
'''


def _error(capsys, *argv: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("lipgraph: error: ") and "Traceback" not in err, err
    return err


def test_missing_input_shape_is_derived_from_the_first_layer(tmp_path: Path, capsys) -> None:
    (tmp_path / "lin.py").write_text(LINEAR_FILE)
    (tmp_path / "conv.py").write_text(CONV_FILE)
    err = _error(capsys, "explain", str(tmp_path / "lin.py"))
    assert "defines neither example_input() nor input_shape" in err
    assert "Linear with in_features=20" in err and "--input-shape 1,20 " in err and "1,3,32,32" not in err
    err = _error(capsys, "explain", str(tmp_path / "conv.py"))
    assert "Conv2d with in_channels=3" in err and "--input-shape 1,3,32,32" in err and "example" in err
    code, out, _ = run(capsys, "explain", str(tmp_path / "lin.py"), "--input-shape", "1,20", "--no-lower")
    assert code == 0 and "input 1×20" in out  # the suggestion works


def test_input_shape_needs_a_batch_dimension(tmp_path: Path, capsys) -> None:
    (tmp_path / "lin.py").write_text(LINEAR_FILE)
    err = _error(capsys, "explain", str(tmp_path / "lin.py"), "--input-shape", "20")
    assert "no batch dimension" in err and "1,20" in err
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    assert "batch dimension first (required)" in capsys.readouterr().out


def test_directory_and_factory_messages(tmp_path: Path, capsys) -> None:
    err = _error(capsys, "explain", str(tmp_path))
    assert "is a directory" in err and "does not exist" not in err
    (tmp_path / "lin.py").write_text(LINEAR_FILE)
    err = _error(capsys, "explain", f"{tmp_path / 'lin.py'}:resnet")
    assert "defines no factory named 'resnet'" in err and "no a " not in err


def test_wrong_input_names_the_first_layer_that_runs(tmp_path: Path, capsys) -> None:
    (tmp_path / "conv.py").write_text(CONV_FILE)
    err = _error(capsys, "explain", str(tmp_path / "conv.py"), "--input-shape", "1,2,8,8")
    assert "in_channels=3" in err and "(e.g. --input-shape 1,3,32,32)" in err


def test_integer_input_names_the_embedding_and_how_to_go_on(tmp_path: Path, capsys) -> None:
    path = tmp_path / "tagger.py"
    path.write_text(EMBEDDING_FILE)
    for argv in ([], ["--input-shape", "1,7"]):  # integer ids, or floats an embedding cannot take
        err = _error(capsys, "explain", str(path), *argv)
        assert "the first layer embed is Embedding(50, 6)" in err and "head is Linear" not in err
        assert "--from head" in err and "lipgraph.analyze_slice(model, tokens, 'head')" in err
    code, out, err = run(capsys, "explain", str(path), "--from", "head", "--json")  # the hint's command works
    assert code == 0, err
    data = json.loads(out)
    from lipgraph.loader import load_model

    tagger, tokens = load_model(str(path))
    direct = lipgraph.analyze_slice(tagger, tokens, "head", cache=False)
    assert data["bound"] == pytest.approx(direct.bound.value, rel=1e-9)
    head = float(torch.linalg.matrix_norm(tagger.head.weight.detach().double(), 2))
    assert data["bound"] == pytest.approx(head, rel=1e-5)


@pytest.mark.parametrize("layers, noted", [
    (lambda: [nn.Linear(4, 4), nn.ReLU()], False),
    (lambda: [nn.Linear(4, 4), nn.Dropout(0.1)], True),
    (lambda: [nn.Linear(4, 4), nn.BatchNorm1d(4)], True),
])
def test_train_mode_note_only_where_the_mode_matters(layers, noted: bool) -> None:
    model = nn.Sequential(*layers()).train()
    report = lipgraph.analyze(model, torch.randn(2, 4), lower=False, cache=False)
    assert any("train mode" in note for note in report.notes) is noted, report.notes
    assert model.training


def _model_file(tmp_path: Path) -> Path:
    path = tmp_path / "lin.py"
    path.write_text(LINEAR_FILE + "\ninput_shape = (1, 20)\n")
    return path


@pytest.mark.parametrize("content, words", [
    (b"\x8a\x0bnot a checkpoint at all" * 10, "not a checkpoint torch.load can read"),
    (b"", "the file is empty"),
])
def test_corrupt_checkpoint(tmp_path: Path, capsys, content: bytes, words: str) -> None:
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(content)
    err = _error(capsys, "explain", str(_model_file(tmp_path)), "--weights", str(ckpt))
    assert words in err and "pickled object" not in err and "file an issue" not in err.lower()


def test_truncated_checkpoint(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "w.pt"
    torch.save(nn.Linear(20, 5).state_dict(), ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    err = _error(capsys, "explain", str(_model_file(tmp_path)), "--weights", str(ckpt))
    assert "corrupt or truncated" in err and "file an issue" not in err.lower()


def test_plain_pickle_checkpoint_without_torch_warning(tmp_path: Path, capsys) -> None:
    import pickle

    ckpt = tmp_path / "w.pkl"
    ckpt.write_bytes(pickle.dumps({"0.weight": [[1.0] * 20] * 5}, protocol=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's UserWarning (naming its own file) must not reach the user
        err = _error(capsys, "explain", str(_model_file(tmp_path)), "--weights", str(ckpt))
    assert "plain pickle file" in err and "torch.save(model.state_dict(), path)" in err
    assert "site-packages" not in err and "UserWarning" not in err


def test_weights_directory(tmp_path: Path, capsys) -> None:
    err = _error(capsys, "explain", str(_model_file(tmp_path)), "--weights", str(tmp_path))
    assert "is a directory" in err


def test_unknown_method_lists_each_method_once(tmp_path: Path, capsys) -> None:
    err = _error(capsys, "explain", str(_model_file(tmp_path)), "--method", "bogus")
    listed = err.split("available: ", 1)[1].strip().split(", ")
    assert len(listed) == len(set(listed)) and {"cp", "seqlip", "autolip", "best"} <= set(listed)


@pytest.mark.parametrize("argv, words", [(["rules", "--help"], "also load this rules file"),
                                         (["doctor", "--help"], "versions of lipgraph")])
def test_help_texts(capsys, argv: list[str], words: str) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert words in " ".join(capsys.readouterr().out.split())


# -- 6. outputs ---------------------------------------------------------------------------------------------------
Pair = collections.namedtuple("Pair", "logits features")


class _Heads(nn.Module):
    def __init__(self, structure: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.structure = structure
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor):
        if self.structure == "dict":
            return {"logits": self.a(x), "aux": {"features": self.b(x)}}
        return Pair(self.a(x), self.b(x))


@pytest.mark.parametrize("structure, names", [("dict", ["logits", "aux.features"]),
                                              ("namedtuple", ["logits", "features"])])
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_dict_and_namedtuple_outputs_keep_their_keys(structure: str, names: list[str], frontend: str) -> None:
    model = _Heads(structure).eval()
    report = lipgraph.analyze(model, torch.randn(1, 4), frontend=frontend, lower=False, cache=False)
    assert [name for name, _ in report.outputs] == names
    norms = [float(torch.linalg.matrix_norm(m.weight.detach().double(), 2)) for m in (model.a, model.b)]
    for (_, bound), norm in zip(report.outputs, norms):
        assert norm <= bound.value <= norm * (1 + 1e-5)
    assert report.bound.value == pytest.approx(math.hypot(*norms), rel=1e-5)  # the outputs together, in ℓ2


def test_report_repr_is_a_short_summary() -> None:
    report = lipgraph.analyze(_Heads("dict").eval(), torch.randn(1, 4), cache=False)
    text = repr(report)
    assert len(text) < 300 and "\n" not in text and str(report) == text
    assert text.startswith("<lipgraph.Report _Heads: ") and "L ≤" in text and ".print()" in text


WIDE_FILE = """
import torch
from torch import nn


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a_module_with_a_long_descriptive_name_to_make_the_line_wide = nn.Linear(4, 2)

    def forward(self, x):
        return self.a_module_with_a_long_descriptive_name_to_make_the_line_wide(x)


def build_model():
    return Wide().eval()


input_shape = (1, 4)
"""


def test_piped_output_keeps_lines_whole(tmp_path: Path, capsys, monkeypatch) -> None:
    """Output to a pipe or file is not wrapped at 80 columns; an explicit --width still is."""
    monkeypatch.delenv("COLUMNS", raising=False)
    path = tmp_path / "wide.py"
    path.write_text(WIDE_FILE)
    code, out, _ = run(capsys, "explain", str(path), "--no-lower")
    assert code == 0
    line = next(line for line in out.splitlines() if "a_module_with" in line)
    assert len(line) > 80 and line.endswith("certified · svd")  # one line, not broken at column 80
    code, narrow, _ = run(capsys, "explain", str(path), "--no-lower", "--width", "60")
    assert max(map(len, narrow.splitlines())) <= 60


def _identity_in_disguise(blocks: int) -> nn.Module:
    """x -> W2 relu(W1 x) with W1 = [I; -I], W2 = [I, -I] is relu(x) - relu(-x) = x (L = 1); AutoLip multiplies
    ‖W2‖·‖W1‖ = 2 per block: upper/lower = 2^blocks."""
    layers: list[nn.Module] = []
    eye = torch.eye(2)
    for _ in range(blocks):
        up, down = nn.Linear(2, 4, bias=False), nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            up.weight.copy_(torch.cat([eye, -eye]))
            down.weight.copy_(torch.cat([eye, -eye], dim=1))
        layers += [up, nn.ReLU(), down]
    return nn.Sequential(*layers).eval()


def test_loose_bound_says_what_to_try(capsys) -> None:
    from lipgraph.render.rich_tree import print_report

    for blocks, loose in ((7, True), (3, False)):
        report = lipgraph.analyze(_identity_in_disguise(blocks), torch.randn(1, 2), cache=False)
        assert report.ratio == pytest.approx(2.0 ** blocks, rel=1e-3)
        print_report(report, width=200)
        hints = [line for line in capsys.readouterr().out.splitlines() if line.startswith("hint: ")]
        if loose:
            assert len(hints) == 1 and "--method seqlip|best" in hints[0] and "--lower-seconds" in hints[0], hints
        else:
            assert not hints


# -- 7. the DCP process pool from a program read from stdin ----------------------------------------------------------
def test_process_pool_from_stdin_falls_back_silently() -> None:
    program = textwrap.dedent("""
        import torch
        from lipgraph.estimators import DenseChain
        from lipgraph.estimators.dcp import solve_pieces, spawn_can_start
        assert not spawn_can_start()
        g = torch.Generator().manual_seed(0)
        pieces = [DenseChain((torch.randn(3, 3, generator=g, dtype=torch.float64),
                              torch.randn(2, 3, generator=g, dtype=torch.float64)), ((0.0, 1.0),)) for _ in range(2)]
        assert solve_pieces(pieces, "eclipse-fast", workers=2) == solve_pieces(pieces, "eclipse-fast", workers=1)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-"], input=program, capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert "Traceback" not in done.stderr and "FileNotFoundError" not in done.stderr, done.stderr
