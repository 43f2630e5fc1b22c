"""``lipgraph explain | rules | doctor``: a thin front over the Python API. Errors print one message, exit 2."""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import platform
import sys
import threading
from typing import Sequence

from .api import analyze
from .errors import InputError, LipgraphError
from .estimators import ESTIMATORS
from .frontend.opkeys import MODULE_KEYS, NAME_KEYS
from .frontend.prepare import load_weights
from .frontend.trace import FRONTENDS
from .loader import load_model
from .passes.annotate import UNSUPPORTED_MODES
from .formats import default_formats
from .linalg.parallel import POLL
from .progress import stop_all_bars
from .registry import Registry, default_registry
from .linalg.lazy import force_all
from .render.rich_tree import make_console
from .render.timings import print_timings
from .ruleapi import Rule
from .submodel import analyze_slice
from .version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)  # the parser lists the output formats: a broken format plugin fails here
        return _interruptible(args)
    except LipgraphError as exc:
        print(f"lipgraph: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # raised by the command itself (a rule, a data loader)
        print("lipgraph: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lipgraph explain ... | head`: the reader left; not an error of ours
        try:  # silence the flush at interpreter exit, which would raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except Exception as exc:  # noqa: BLE001 - never show a raw traceback to a CLI user
        if os.environ.get("LIPGRAPH_DEBUG"):
            raise
        print(f"lipgraph: internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in lipgraph; rerun with LIPGRAPH_DEBUG=1 for the traceback and report it.",
              file=sys.stderr)
        return 3


def _interruptible(args: argparse.Namespace) -> int:
    """Run the command in a worker thread while this (the main) thread waits in ``POLL``-second slices, so Ctrl-C is
    noticed at once even during a long torch call. Then: progress bars stopped, "interrupted" on stderr, exit 130
    without waiting for the computations still running (cache entries are written atomically: no partial entry)."""
    outcome: dict = {}

    def command() -> None:
        try:
            outcome["value"] = args.run(args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=contextvars.copy_context().run, args=(command,), name="lipgraph-command",
                              daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(POLL)
    except KeyboardInterrupt:
        stop_all_bars()
        if sys.stderr.isatty():  # another live display (the lower-bound search's bar): clear its line, show the cursor
            sys.stderr.write("\r\x1b[2K\x1b[?25h")
        print("lipgraph: interrupted", file=sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _parser() -> argparse.ArgumentParser:
    formats = default_formats()
    parser = argparse.ArgumentParser(prog="lipgraph", description="Certified Lipschitz bounds for PyTorch networks.")
    parser.add_argument("--version", action="version", version=f"lipgraph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    explain = sub.add_parser("explain", help="bound a model's Lipschitz constant and show where it comes from",
                             description="Executes MODEL (a Python file) to build the model, then analyses it.")
    explain.add_argument("model", help="model.py or model.py:factory (the file is executed)")
    explain.add_argument("--input-shape", help="input shape, batch dimension first (required), e.g. 1,3,32,32")
    explain.add_argument("--from", dest="start", metavar="MODULE[:END]",
                         help="analyse only submodule MODULE, or the consecutive siblings MODULE to END, on the input "
                              "they receive (e.g. the layers after an nn.Embedding, which takes integer ids)")
    explain.add_argument("--weights", help="state dict to load (torch.load with weights_only=True)")
    explain.add_argument("--norm", default="2", choices=["1", "2", "inf"], help="ℓp norm (default 2)")
    explain.add_argument("--method", default="autolip", metavar="METHOD",
                         help=f"{', '.join(ESTIMATORS.method_names())} or one chain estimator "
                              "(lipgraph rules --estimators)")
    explain.add_argument("--budget", type=float, metavar="S",
                         help="total seconds of the chain and block estimators (default: 120 for --method best, "
                              "else unlimited; inf: no limit)")
    explain.add_argument("--frontend", default="auto", choices=FRONTENDS)
    explain.add_argument("--rules", action="append", default=[], metavar="FILE", help="extra rules file (repeatable)")
    explain.add_argument("--unsupported", default="error", choices=UNSUPPORTED_MODES,
                         help="ops without a rule: fail (default) or mark them unbounded")
    explain.add_argument("--format", metavar="FORMAT", help=f"output format: {', '.join(formats.names('report'))} "
                         "(default tree; lipgraph rules --formats lists them)")
    explain.add_argument("--json", action="store_true", help="print the JSON report (--format json)")
    explain.add_argument("--depth", type=int, help="collapse the tree below this depth")
    explain.add_argument("--ascii", action="store_true", help="plain ASCII output")
    explain.add_argument("--width", type=int, help="terminal width")
    explain.add_argument("--threads", type=int, help="torch CPU threads (default: the cores other processes "
                                                      "leave idle, by the load average; at least 1)")
    explain.add_argument("--lower", action=argparse.BooleanOptionalAction, default=True,
                         help="search for a proven lower bound and show lower <= L <= upper (default: on, with a "
                              "small fixed budget; --no-lower skips it)")
    explain.add_argument("--data", metavar="FILE",
                         help="inputs to start the lower-bound search from (a tensor saved with torch.save)")
    explain.add_argument("--lower-seconds", type=float, metavar="S", help="time budget of the lower-bound search")
    explain.add_argument("--save-lower-input", metavar="FILE",
                         help="save the input attaining the lower bound (torch.save)")
    explain.add_argument("--formula", action="store_true",
                         help="show each node's bound as a formula over its children's constants")
    explain.add_argument("--latex", action="store_true", help="print the formulas as a LaTeX align* block "
                                                                "(--format latex)")
    explain.add_argument("--top", type=int, metavar="N",
                         help="mark and list the N layer constants the bound depends on most (elasticity)")
    explain.add_argument("--layer-lower", action="store_true",
                         help="power iteration on every linear layer (l2): a proven lower bound beside each "
                              "certified layer norm")
    explain.add_argument("--device", help="where to compute the operator norms: cpu (default) or cuda[:N]")
    explain.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                         help="keep per-layer norms on disk ($LIPGRAPH_CACHE_DIR or ~/.cache/lipgraph) so a second "
                              "run of the same model is fast (default: on; --no-cache skips it)")
    explain.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    explain.add_argument("--box", metavar="LO,HI", help="local bound on the box [LO, HI]^d (docs/local.md)")
    explain.add_argument("--ball", type=float, metavar="EPS", help="local bound on the ball of radius EPS (in --norm) "
                         "around --center (default: the example input)")
    explain.add_argument("--center", metavar="FILE", help="torch.save'd tensor: the centre of --ball")
    explain.add_argument("--timings", action="store_true", help="list the layers that took longest to bound")
    explain.set_defaults(run=_explain)

    rules = sub.add_parser("rules", help="list every rule, its op keys, kind and source")
    rules.add_argument("--rules", action="append", default=[], metavar="FILE",
                       help="also load this rules file (repeatable), as explain --rules does")
    rules.add_argument("--op", metavar="KEY", help="show one op key (or a spelling: relu, nn.ReLU, F.relu) in full")
    rules.add_argument("--estimators", action="store_true",
                       help="list the chain estimators (for explain --method) instead of the op rules")
    rules.add_argument("--formats", action="store_true", help="list the output formats (explain --format)")
    rules.set_defaults(run=_rules)

    certify = sub.add_parser("certify", help="certified robustness radii of a classifier on labelled inputs",
                             description="Executes MODEL (a Python file) to build the model; per input, the radius "
                                         "within which its predicted class cannot change, and certified accuracy.")
    certify.add_argument("model", help="model.py or model.py:factory (the file is executed)")
    certify.add_argument("--data", required=True, metavar="FILE",
                         help="(inputs, labels) or {'x': inputs, 'y': labels} saved with torch.save")
    certify.add_argument("--weights", help="state dict to load (torch.load with weights_only=True)")
    certify.add_argument("--norm", default="2", choices=["1", "2", "inf"], help="ℓp norm of the radius (default 2)")
    certify.add_argument("--radii", metavar="R,R,...", help="radii of the certified-accuracy table, e.g. 0.1,0.25,0.5")
    certify.add_argument("--global-bound", action="store_true", help="margin / (c·L) only, no per-class-pair bounds")
    certify.add_argument("--rules", action="append", default=[], metavar="FILE", help="extra rules file (repeatable)")
    certify.add_argument("--unsupported", default="error", choices=UNSUPPORTED_MODES)
    certify.add_argument("--format", metavar="FORMAT",
                         help=f"output format: {', '.join(formats.names('certificate'))} (default table)")
    certify.add_argument("--json", action="store_true", help="print the result as JSON (per-input radii included; "
                                                              "--format json)")
    certify.add_argument("--plot", metavar="FILE.png", help="save a plot of certified accuracy vs radius (matplotlib)")
    certify.add_argument("--ascii", action="store_true", help="plain ASCII output")
    certify.add_argument("--width", type=int, help="terminal width")
    certify.add_argument("--threads", type=int, help="torch CPU threads")
    certify.add_argument("--local", action="store_true", help="also radii from local bounds on balls (docs/local.md)")
    certify.add_argument("--workers", type=int, metavar="N", help="--local: processes of the local pool")
    certify.add_argument("--dask", metavar="ADDRESS", help="--local: run the points on a dask.distributed scheduler")
    certify.set_defaults(run=_certify)

    doctor = sub.add_parser("doctor", help="versions and loaded rule packs",
                            description="Print the versions of lipgraph, Python, torch and its dependencies, and "
                                        "where the loaded rules come from (for bug reports).")
    doctor.set_defaults(run=_doctor)
    return parser


def _load_rule_files(files: list[str]) -> None:
    registry = default_registry()
    for file in files:
        registry.load_file(file)


def _explain(args: argparse.Namespace) -> int:
    import torch

    from .threads import idle_threads

    saved = torch.get_num_threads()
    torch.set_num_threads(args.threads or idle_threads())
    try:
        return _explain_model(args)
    finally:
        torch.set_num_threads(saved)


def _explain_model(args: argparse.Namespace) -> int:
    _load_rule_files(args.rules)
    model, example = load_model(args.model, args.input_shape)
    if args.weights:
        load_weights(model, args.weights)
    if not args.lower and (args.data or args.lower_seconds or args.save_lower_input):
        raise InputError("--no-lower contradicts --data, --lower-seconds and --save-lower-input")
    fmt = _format(args, "report", {"json": args.json, "latex": args.latex}, default="tree")
    quiet = args.quiet or fmt == "json"
    options: dict = {"progress": not quiet and sys.stderr.isatty()}
    if args.lower_seconds:
        options["seconds"] = args.lower_seconds
    kwargs = dict(norm=args.norm, method=args.method, frontend=args.frontend, unsupported=args.unsupported,
                  lower=args.lower, data=_load_data(args.data) if args.data else None, lower_options=options,
                  layer_lower=args.layer_lower, device=args.device, cache=args.cache, quiet=quiet,
                  region=_region(args), budget=args.budget)
    if args.start:
        start, _, end = args.start.partition(":")
        report = analyze_slice(model, example, start, end or None, **kwargs)
    else:
        report = analyze(model, example, **kwargs)
    if args.save_lower_input and report.lower_input is not None:
        import torch

        torch.save(report.lower_input, args.save_lower_input)
    force_all(b for n in report.tree.walk() for b in (n.bound, n.fused and n.fused.product) if b)  # shown: in the pool
    default_formats().write(report, "report", fmt, depth=args.depth, ascii_only=args.ascii, width=args.width,
                            formulas=args.formula, top=args.top)
    if args.timings and fmt in ("tree", "latex"):  # the formats read on a terminal
        print_timings(report, make_console(ascii_only=args.ascii, width=args.width))
    return 0


def _region(args: argparse.Namespace):
    """``--box LO,HI`` or ``--ball EPS [--center FILE]`` as a lipgraph region (None without either)."""
    from .region import Ball, Box

    if args.box and args.ball is not None:
        raise InputError("give --box or --ball, not both")
    if args.center and args.ball is None:
        raise InputError("--center needs --ball EPS")
    if args.box:
        try:
            lo, hi = (float(v) for v in args.box.split(","))
        except ValueError:
            raise InputError(f"--box {args.box!r} must be two numbers LO,HI") from None
        return Box(lo, hi)
    if args.ball is None:
        return None
    return Ball(_load_data(args.center) if args.center else None, args.ball, norm=args.norm)


def _format(args: argparse.Namespace, subject: str, aliases: dict[str, bool], default: str) -> str:
    """``--format NAME``, or the older switch that names one (``--json``); both at once must agree."""
    named = [name for name, given in aliases.items() if given]
    if args.format is not None:
        default_formats().get(subject, args.format)  # an unknown name fails here, listing the known ones
        named.append(args.format)
    if len(set(named)) > 1:
        raise InputError(f"choose one output format, not {' and '.join(sorted(set(named)))}")
    return named[0] if named else default


def _load_data(path: str):
    """A tensor (N, ...) of inputs, or a tuple/list/dict holding one (``(x, y)``, ``{"x": ...}``)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"could not load data file {path} with weights_only=True: {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("x", "inputs", "input", "data", "images") if k in obj), None)
    elif isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        obj = obj[0]
    if not isinstance(obj, torch.Tensor) or not obj.is_floating_point():
        raise InputError(f"data file {path} must hold a floating tensor of inputs (N, ...), "
                         "or a tuple/dict whose first/'x' entry is one")
    return obj


def _rules(args: argparse.Namespace) -> int:
    """Every rule grouped by where it comes from (built-in family, file, pack); ``--op`` shows one in full."""
    from rich.table import Table

    if args.estimators:
        return _estimators()
    if args.formats:
        return _formats()
    _load_rule_files(args.rules)
    registry = default_registry()
    spellings: dict[str, list[str]] = {}
    for cls, key in MODULE_KEYS.items():
        spellings.setdefault(key, []).append(f"nn.{cls.__name__}")
    for name, key in NAME_KEYS.items():
        if name != key:
            spellings.setdefault(key, []).append(name)
    console = make_console()
    if args.op:
        key = _op_key(args.op, registry)
        rule = registry.get(key)
        names = registry.aliases_of(key) + spellings.get(key, [])
        if key in registry.patterns:  # a subgraph pattern: its matches show as one node of this type
            names.insert(0, f"pattern {registry.patterns[key].title}")
        for field, value in (("op key", key), ("kind", _rule_kind(rule)),
                             ("description", rule.description), ("spellings", ", ".join(names) or "(the key only)"),
                             ("on a region", _region_rules(registry, key)), ("source", rule.source)):
            console.print(f"{field + ':':<13}{value}", markup=False, highlight=False)
        return 0
    families: dict[str, list[tuple[str, Rule]]] = {}
    for key, rule in registry.items():
        family = rule.source.removeprefix("builtin (lipgraph.rules.").removesuffix(")") \
            if rule.source.startswith("builtin (lipgraph.rules.") else rule.source
        families.setdefault(family, []).append((key, rule))
    console.print(f"{len(registry.items())} rules in {len(families)} families; lipgraph rules --op KEY shows one "
                  "with all its spellings", markup=False, highlight=False)
    for family, rules in sorted(families.items(), key=lambda item: (" " in item[0], item[0])):  # built-ins first
        console.print(f"\n{family}", style="bold", markup=False, highlight=False)
        table = Table()
        for column in ("op key", "kind", "description", "on a region"):
            table.add_column(column, overflow="fold")
        for key, rule in rules:
            table.add_row(key, _rule_kind(rule), rule.description, _region_rules(registry, key))
        console.print(table)
    return 0


def _rule_kind(rule: Rule) -> str:
    if rule.description.startswith("not globally Lipschitz"):
        return "refused"
    return "exact" if rule.exact else "upper bound"


def _op_key(text: str, registry: Registry) -> str:
    """The op key of ``--op``: a key, or a spelling (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu_``)."""
    name = text.rsplit(".", 1)[-1]
    candidates = [text, name, NAME_KEYS.get(name), *(k for cls, k in MODULE_KEYS.items() if cls.__name__ == name),
                  *(k for k, _ in registry.items() if any(a == text or a.endswith(f".{name}")  # library classes
                                                          for a in (k, *registry.aliases_of(k))))]
    key = next((k for k in candidates if k and registry.get(k) is not None), None)
    if key is None:
        raise InputError(f"no rule for op {text!r}; `lipgraph rules` lists every op key")
    return key


def _region_rules(registry, key: str) -> str:
    """Which rules a region analysis has for op ``key`` (docs/local.md): interval and/or local."""
    found = [name for name, rule in (("interval", registry.interval(key)), ("local", registry.local(key)))
             if rule is not None]
    return " + ".join(found) or "no interval rule"


def _estimators() -> int:
    """The methods of ``explain --method`` and the chain estimators they run (docs/mathematics.md §5–§8)."""
    from rich.table import Table

    table = Table(title="chain estimators (explain --method NAME runs one; methods below run several)")
    for column in ("name", "kind", "applies to", "description", "source"):
        table.add_column(column, overflow="fold", no_wrap=column in ("name", "kind"))
    for name, est in ESTIMATORS.items():
        table.add_row(name, "certified" if est.certified else "estimate", est.scope, est.description,
                      getattr(est.fn, "__module__", None) or "?")
    for method, names in ESTIMATORS.methods.items():
        table.add_row(f"--method {method}", "", "", ", ".join(names) or "no chain estimator (AutoLip with fusion)")
    table.add_row("--method best", "", "", "every estimator above")
    make_console().print(table)
    return 0


def _formats() -> int:
    """The output formats of ``explain --format`` and ``certify --format``, with where each came from."""
    from rich.table import Table

    table = Table(title="output formats (explain --format NAME for a report; certify --format NAME)")
    for column in ("name", "renders", "description", "source"):
        table.add_column(column, overflow="fold")
    for fmt in default_formats().items():
        table.add_row(fmt.name, fmt.subject, fmt.description, fmt.source)
    make_console().print(table)
    return 0


def _certify(args: argparse.Namespace) -> int:
    import torch

    from .certify import certify, load_labelled

    if args.threads:
        torch.set_num_threads(args.threads)
    _load_rule_files(args.rules)
    x, y = load_labelled(args.data)
    model, _example = load_model(args.model)
    if args.weights:
        load_weights(model, args.weights)
    try:
        radii = [float(r) for r in args.radii.split(",") if r.strip()] if args.radii else None
    except ValueError:
        raise InputError(f"--radii {args.radii!r} is not a comma-separated list of numbers") from None
    if (args.dask or args.workers) and not args.local:
        raise InputError("--workers and --dask run the local radii: add --local")
    if args.dask and args.workers:
        raise InputError("give --workers or --dask, not both")
    with _dask_executor(args.dask) as executor:
        cert = certify(model, x, y, norm=args.norm, radii=radii, pairwise=not args.global_bound,
                       unsupported=args.unsupported, local=args.local, executor=executor,
                       workers=args.workers, progress=not args.json and sys.stderr.isatty())
    if args.plot:
        cert.plot(args.plot)
    fmt = _format(args, "certificate", {"json": args.json}, default="table")
    default_formats().write(cert, "certificate", fmt, ascii_only=args.ascii, width=args.width)
    return 0


@contextlib.contextmanager
def _dask_executor(address: str | None):
    """dask.distributed's ``Client(address).get_executor()`` for ``--dask``, the client closed after use; None
    without ``--dask``."""
    if address is None:
        yield None
        return
    try:
        from dask.distributed import Client
    except ImportError:
        raise InputError("--dask needs dask.distributed: pip install 'dask[distributed]'") from None
    try:
        client = Client(address)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"--dask: cannot reach a dask scheduler at {address!r}: {exc}") from None
    with client:
        yield client.get_executor()


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)  # rich has no __version__ attribute
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _doctor(args: argparse.Namespace) -> int:
    import networkx
    import sympy
    import torch

    console = make_console()
    console.print(f"lipgraph {__version__}  python {platform.python_version()}  ({platform.platform()})")
    console.print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}, "
                  f"threads: {torch.get_num_threads()})  networkx {networkx.__version__}  sympy {sympy.__version__}"
                  f"  rich {_version('rich')}")
    registry = default_registry()
    console.print(f"{len(registry.items())} rules loaded from:")
    for pack in registry.packs:
        console.print(f"  - {pack}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
