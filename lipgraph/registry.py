"""The rule registry: canonical op keys -> rules, plus user spellings (module classes, functions) -> keys.

Built-in rules (``lipgraph.rules``), third-party packs (entry-point group ``lipgraph.rules``), local files
(``--rules my_rules.py``) and user code all register through the same API, :func:`register` / :func:`rule`.
Every rule remembers where it came from; ``lipgraph rules`` lists them. A pack that fails to load is an error.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from torch import nn

from .errors import RuleError
from .ruleapi import IntervalFn, Rule, RuleFn, make_rule
from .userfile import run_user_file

ENTRY_POINT_GROUP = "lipgraph.rules"
BUILTIN_PACKAGE = "lipgraph.rules"


class Registry:
    """Maps op keys to rules, and module classes / functions to op keys."""

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {}
        self._aliases: dict[Any, str] = {}
        self._named: dict[str, str] = {}  # "package.module.Class" -> key, for libraries lipgraph never imports
        self.patterns: dict[str, Any] = {}  # name -> lipgraph.Pattern, matched before annotation
        self._intervals: dict[str, IntervalFn] = {}  # op key -> interval rule (region analyses, docs/local.md)
        self._local: dict[str, Rule] = {}  # op key -> local Lipschitz rule, valid on the region only
        self.packs: list[str] = []  # what was loaded, for `lipgraph doctor`

    # -- registration ------------------------------------------------------------------------------
    def register(
        self,
        target: str | type | Callable,
        rule: Rule | RuleFn,
        *,
        key: str | None = None,
        override: bool = False,
        exact: bool = False,
        affine: bool = False,
        source: str | None = None,
    ) -> Rule:
        """Register ``rule`` for ``target``: an op key (``"relu"``), a module class or a function.

        A class or function is an alias of ``key`` (default: its qualified name); module classes with a
        rule become leaves of the trace, and functions are traced as single ops.
        """
        key = key or (target if isinstance(target, str) else _default_key(target))
        rule = make_rule(rule, name=key, exact_=exact, affine=affine)
        stale = [t for t, k in self._aliases.items()
                 if k == key and t is not target and not isinstance(target, str) and _display_name(t) == _display_name(target)]
        for old in stale:  # the same class defined again (a re-run script or notebook cell): replace it
            del self._aliases[old]
        if key in self._rules and self._rules[key] is not rule and not override and not stale:
            raise RuleError(
                f"a rule for op {key!r} is already registered (from {self._rules[key].source}); "
                "pass override=True to replace it"
            )
        if not isinstance(target, str):
            if not (isinstance(target, type) and issubclass(target, nn.Module)) and not callable(target):
                raise RuleError(f"cannot register {target!r}: give an op key, an nn.Module class or a function")
            self._aliases[target] = key
        rule.source = rule.source or source or _loading_source() or _caller_module()
        if key not in rule.keys:
            rule.keys.append(key)
        self._rules[key] = rule
        return rule

    def register_named(self, qualified_name: str, rule: Rule | RuleFn, *, exact: bool = False,
                       override: bool = False) -> Rule:
        """Register ``rule`` for the module class whose fully qualified name (``cls.__module__ + "." +
        cls.__qualname__``) is ``qualified_name``, without importing it: a layer library's classes get rules that
        apply once the user imports that library. The name is the rule's op key."""
        made = self.register(qualified_name, rule, exact=exact, override=override)
        self._named[qualified_name] = qualified_name
        return made

    def register_pattern(self, pattern: Any, *, override: bool = False) -> Rule:
        """Register a subgraph pattern (:class:`lipgraph.Pattern`): its matches become one op
        with key ``pattern.name``, bounded by ``pattern.rule``."""
        if pattern.name in self.patterns and not override:
            raise RuleError(f"a pattern named {pattern.name!r} is already registered; pass override=True to replace it")
        made = self.register(pattern.name, pattern.rule, exact=pattern.exact, override=override)
        made.description = made.description or pattern.description
        self.patterns[pattern.name] = pattern
        return made

    def rule(self, *targets: str | type | Callable, exact: bool = False, override: bool = False):
        """Decorator form: ``@registry.rule(nn.Conv2d, "conv2d")`` on ``def conv(ctx) -> Bound | Transfer``.

        String targets are op keys (the first one names the rule); classes and functions become aliases.
        """
        keys = [t for t in targets if isinstance(t, str)]
        aliases = [t for t in targets if not isinstance(t, str)]

        def decorate(fn: RuleFn) -> RuleFn:
            main = keys[0] if keys else _default_key(aliases[0]) if aliases else fn.__name__
            made = make_rule(fn, name=main, exact_=exact)
            for key in keys or [main]:
                self.register(key, made, override=override)
            for alias in aliases:
                self.register(alias, made, key=main, override=override)
            return fn

        return decorate

    def register_interval(self, key: str, fn: IntervalFn, *, override: bool = False) -> IntervalFn:
        """Register the interval rule of op ``key``: ``fn(ctx)`` maps the input intervals ``ctx.bounds`` to the
        output's interval (lo, hi) — a tuple of them for a tuple output — containing every value the op takes."""
        if key in self._intervals and self._intervals[key] is not fn and not override:
            raise RuleError(f"an interval rule for op {key!r} is already registered; pass override=True to replace it")
        self._intervals[key] = fn
        return fn

    def register_local(self, key: str, rule: Rule | RuleFn, *, override: bool = False) -> Rule:
        """Register a local Lipschitz rule for op ``key``: like a Lipschitz rule, but it may read the input
        intervals ``ctx.bounds`` and is used only in region analyses (its constant holds on the region only)."""
        if key in self._local and not override:
            raise RuleError(f"a local rule for op {key!r} is already registered; pass override=True to replace it")
        made = make_rule(rule, name=key)
        made.source = made.source or _loading_source() or _caller_module()
        self._local[key] = made
        return made

    def interval(self, key: str) -> IntervalFn | None:
        return self._intervals.get(key)

    def localized(self) -> "Registry":
        """A copy whose Lipschitz rules are replaced by the local rules where an op has one."""
        new = self.copy()
        new._rules.update(self._local)
        return new

    # -- lookup ------------------------------------------------------------------------------------
    def get(self, key: str) -> Rule | None:
        return self._rules.get(key)

    def alias(self, target: Any) -> str | None:
        """The op key a user-registered module class or function stands for."""
        try:
            key = self._aliases.get(target)
        except TypeError:  # unhashable target
            return None
        if key is None and isinstance(target, type) and self._named:
            key = self._named.get(_display_name(target))
        return key

    def aliases_of(self, key: str) -> list[str]:
        return sorted([_display_name(t) for t, k in self._aliases.items() if k == key]
                      + [name for name, k in self._named.items() if k == key and name != key])

    @property
    def functions(self) -> tuple[Callable, ...]:
        """User-registered plain functions: the tracer wraps them as single ops."""
        return tuple(t for t in self._aliases if not isinstance(t, type) and callable(t))

    def items(self) -> list[tuple[str, Rule]]:
        return sorted(self._rules.items())

    # -- derived registries ------------------------------------------------------------------------
    def copy(self) -> "Registry":
        new = Registry()
        new._rules = dict(self._rules)
        new._aliases = dict(self._aliases)
        new._named = dict(self._named)
        new.patterns = dict(self.patterns)
        new._intervals = dict(self._intervals)
        new._local = dict(self._local)
        new.packs = list(self.packs)
        return new

    def with_overrides(self, rules: Mapping[Any, Rule | RuleFn] | None) -> "Registry":
        """A copy where ``rules`` (target -> rule) replace or add to these, for one analysis."""
        if not rules:
            return self
        new = self.copy()
        for target, rule in rules.items():
            new.register(target, rule, override=True, source="rules= argument")
        return new

    # -- loading packs -----------------------------------------------------------------------------
    def load_builtins(self) -> None:
        from importlib import import_module

        package = import_module(BUILTIN_PACKAGE)
        for name in package.MODULES:
            with self._loading(f"builtin ({BUILTIN_PACKAGE}.{name})"):
                import_module(f"{BUILTIN_PACKAGE}.{name}").register(self)
        self.packs.append(f"builtin: {BUILTIN_PACKAGE} ({len(package.MODULES)} modules)")

    def load_entry_points(self) -> None:
        """Load third-party packs: each entry point is a callable ``register(registry)`` or a module."""
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)  # the installed package that declares it (None for hand-made entry points)
            label = f"entry point {ep.name} ({ep.value})" + (f" of package {dist.name} {dist.version}" if dist else "")
            with self._loading(label), _as_rule_error(f"rule pack {label} failed to load"):
                loaded = ep.load()
                if callable(loaded):
                    loaded(self)
            self.packs.append(label)

    def load_file(self, path: str | Path) -> None:
        """Run a local rules file; its top-level ``lipgraph.register``/``@lipgraph.rule`` calls land here."""
        path = Path(path)
        if not path.is_file():
            raise RuleError(f"rules file {path} does not exist")
        label = f"file {path}"
        with self._loading(label), _as_rule_error(f"rules file {path} failed to load"):
            run_user_file(path, "lipgraph_rules")
        self.packs.append(label)

    @contextlib.contextmanager
    def _loading(self, label: str) -> Iterator[None]:
        _LOADING.append((self, label))
        try:
            yield
        finally:
            _LOADING.pop()


# -- the process-wide default registry and the module-level API ----------------------------------------
_LOADING: list[tuple[Registry, str]] = []
_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The registry with built-in rules and installed packs, created on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        registry = Registry()
        registry.load_builtins()
        registry.load_entry_points()
        _DEFAULT = registry
    return _DEFAULT


def current_registry() -> Registry:
    """The registry a pack being loaded registers into, else the default one."""
    return _LOADING[-1][0] if _LOADING else default_registry()


def register(target: str | type | Callable, rule: Rule | RuleFn, *, key: str | None = None,
             override: bool = False, exact: bool = False) -> Rule:
    """Register a rule, e.g. ``lipgraph.register(MyAct, lipgraph.elementwise(slope=(0, 1)))``."""
    return current_registry().register(target, rule, key=key, override=override, exact=exact)


def register_named(qualified_name: str, rule: Rule | RuleFn, *, exact: bool = False, override: bool = False) -> Rule:
    """Register a rule for a module class by its fully qualified name, without importing it (see
    :meth:`Registry.register_named`)."""
    return current_registry().register_named(qualified_name, rule, exact=exact, override=override)


def register_pattern(pattern: Any, *, override: bool = False) -> Rule:
    """Register a subgraph pattern (:class:`lipgraph.Pattern`) and its rule (see :mod:`lipgraph.patternapi`)."""
    return current_registry().register_pattern(pattern, override=override)


def rule(*targets: str | type | Callable, exact: bool = False, override: bool = False):
    """Decorator: ``@lipgraph.rule(MyBlock)`` on ``def my_rule(ctx) -> lipgraph.Bound | lipgraph.Transfer``."""
    return current_registry().rule(*targets, exact=exact, override=override)


def interval_rule(*keys: str, override: bool = False):
    """Decorator: ``@lipgraph.interval_rule("my_op")`` on ``def f(ctx) -> (lo, hi)`` (see Registry.register_interval)."""

    def decorate(fn: IntervalFn) -> IntervalFn:
        for key in keys:
            current_registry().register_interval(key, fn, override=override)
        return fn

    return decorate


def local_rule(*keys: str, override: bool = False):
    """Decorator: ``@lipgraph.local_rule("my_op")`` on ``def f(ctx) -> Bound | Transfer`` reading ``ctx.bounds``."""

    def decorate(fn: RuleFn) -> RuleFn:
        for key in keys:
            current_registry().register_local(key, fn, override=override)
        return fn

    return decorate


# -- helpers ---------------------------------------------------------------------------------------------
def _default_key(target: Any) -> str:
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)


def _display_name(target: Any) -> str:
    module = getattr(target, "__module__", "") or ""
    return f"{module}.{_default_key(target)}" if module else _default_key(target)


def _loading_source() -> str | None:
    return _LOADING[-1][1] if _LOADING else None


def _caller_module() -> str:
    """The first module outside lipgraph's own registry code that called us (for ``lipgraph rules``)."""
    for frame in inspect.stack()[1:]:
        name = frame.frame.f_globals.get("__name__", "")
        if not name.startswith("lipgraph.registry") and not name.startswith("lipgraph.ruleapi"):
            return f"api ({name})"
    return "api"



@contextlib.contextmanager
def _as_rule_error(message: str) -> Iterator[None]:
    try:
        yield
    except RuleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a user pack must be reported, not swallowed
        last = traceback.extract_tb(exc.__traceback__)[-1]
        raise RuleError(f"{message}: {type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})") from exc
