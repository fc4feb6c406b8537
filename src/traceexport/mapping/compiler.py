"""Compile mapping value specs into plain Python closures, once, at load time.

Every problem is collected with its file, line and key path; nothing is evaluated while compiling.
A compiled getter takes the record context (a dict) and returns a value; ``None`` means "absent" and
the field is left out of the output.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from traceexport.mapping.expressions import (
    Call,
    Expression,
    ExpressionSyntaxError,
    Literal,
    PathRef,
    is_template,
    parse_expression,
    split_template,
)
from traceexport.mapping.functions import REGISTRY, as_text

Getter = Callable[[dict[str, Any]], Any]


class Where:
    """A place in a mapping file: file, line and key path, rendered as ``file:line: key.path``."""

    __slots__ = ("file", "line", "path")

    def __init__(self, file: str, line: int, path: str) -> None:
        self.file, self.line, self.path = file, line, path

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}" if self.file else self.path

    def child(self, key: Any, container: Any = None) -> Where:
        """The place of ``key`` inside ``container`` (a LineDict knows each key's own line)."""
        lines = getattr(container, "lines", None)
        file, line = lines[key] if lines and key in lines else (self.file, self.line)
        suffix = f"[{key}]" if isinstance(key, int) and not isinstance(key, bool) else f".{key}"
        return Where(file, line, f"{self.path}{suffix}" if self.path else str(key))


class Const:
    """A compiled value that does not depend on the record."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Path:
    """A compiled bare path (``$a`` or ``$a.b``): object builders and pipelines read these inline."""

    __slots__ = ("get", "parts")

    def __init__(self, parts: tuple[str | int, ...]) -> None:
        self.parts = parts
        self.get = path_getter(parts)


Compiled = Getter | Const | Path


class MappingRuntimeError(Exception):
    """A registry function failed on one record; carries the file, line and key path for the one-line reason."""

    def __init__(self, where: Where, function: str, exc: Exception) -> None:
        self.where = where
        detail = " ".join(str(exc).split())  # one line, whatever the exception's text holds
        super().__init__(f"{where}: {function} failed: {type(exc).__name__}: {detail}")


def as_getter(compiled: Compiled) -> Getter:
    if isinstance(compiled, Const):
        value = compiled.value
        return lambda ctx: value
    if isinstance(compiled, Path):
        return compiled.get
    return compiled


class Scope:
    """What a path may name at one place in a mapping: record fields, derived keys, ``item``."""

    def __init__(self, fields: frozenset[str], derived: frozenset[str], in_each: bool = False) -> None:
        self.fields = fields
        self.derived = derived
        self.in_each = in_each

    def check(self, ref: PathRef) -> str | None:
        root = ref.parts[0]
        if root == "item":
            return None if self.in_each else "$item is only available inside an entity with 'each'"
        if root == "derived" and len(ref.parts) > 1 and ref.parts[1] not in self.derived:
            return f"unknown derived field {ref.parts[1]!r} (see mappings/README.md for the list)"
        if root not in self.fields:
            return f"unknown field {root!r} for this record type"
        return None


class Compiler:
    """Turns specs into getters, appending ``(where, message)`` problems instead of raising."""

    def __init__(self, tables: dict[str, Any], options: dict[str, Any] | None = None) -> None:
        self.tables = tables
        self.options = options or {}
        self.problems: list[tuple[str, str]] = []

    def problem(self, where: Where, message: str) -> Const:
        self.problems.append((str(where), message))
        return Const(None)

    # --- values --------------------------------------------------------------------------------------
    def value(self, spec: Any, where: Where, scope: Scope) -> Compiled:
        if isinstance(spec, str):
            return self._string(spec, where, scope)
        if isinstance(spec, dict):
            return self._mapping(spec, where, scope)
        if isinstance(spec, list):
            return self._list(spec, where, scope)
        return Const(spec)

    def _string(self, spec: str, where: Where, scope: Scope) -> Compiled:
        try:
            if spec.startswith("$$"):
                return Const(spec[1:])
            if is_template(spec):
                return self._template(spec, where, scope)
            if spec.startswith("$") or _looks_like_call(spec):
                return self._expression(parse_expression(spec), where, scope)
        except ExpressionSyntaxError as exc:
            return self.problem(where, f"bad expression {spec!r}: {exc}")
        return Const(spec)

    def _template(self, spec: str, where: Where, scope: Scope) -> Compiled:
        parts: list[Compiled] = []
        for part in split_template(spec):
            parts.append(Const(part) if isinstance(part, str) else self._expression(part, where, scope))
        getters = [(p.value, None) if isinstance(p, Const) else (None, as_getter(p)) for p in parts]

        def template(ctx: dict[str, Any]) -> str:
            out: list[str] = []
            for text, getter in getters:
                if getter is None:
                    out.append(str(text))
                else:
                    value = getter(ctx)
                    out.append("" if value is None else as_text(value))
            return "".join(out)

        return template

    def _list(self, spec: list[Any], where: Where, scope: Scope) -> Compiled:
        items = [as_getter(self.value(item, where.child(i), scope)) for i, item in enumerate(spec)]

        def build_list(ctx: dict[str, Any]) -> list[Any]:
            return [v for v in (g(ctx) for g in items) if v is not None]

        return build_list

    def _mapping(self, spec: dict[Any, Any], where: Where, scope: Scope) -> Compiled:
        directives = [k for k in spec if is_directive(k)]
        if directives:
            return self._directive(spec, directives, where, scope)
        return self.object(spec, where, scope)

    def object(self, spec: dict[Any, Any], where: Where, scope: Scope) -> Getter:
        """An object builder: scalar constants copied, dynamic fields evaluated, nulls left out."""
        consts: dict[str, Any] = {}
        dynamic: list[tuple[str, Getter | Path]] = []
        merges: list[Getter] = []
        for key, sub in spec.items():
            sub_where = where.child(key, spec)
            if not isinstance(key, str | int) or isinstance(key, bool):
                shown = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)
                self.problem(sub_where, f"the key {shown} is not text: YAML reads unquoted on/off/yes/no/true/false, "
                                        "null/~, decimals and dates as values; quote it (e.g. 'on':)")
                continue
            if key == "$merge":
                for i, merge_spec in enumerate(sub if isinstance(sub, list) else [sub]):
                    merges.append(as_getter(self.value(merge_spec, sub_where.child(i), scope)))
                continue
            if is_directive(key):  # an entity's body: the whole value can be no directive
                self.problem(sub_where, f"{key!r} is a directive, not a key: "
                                        f"write '${key}' for a key starting with '$'")
                continue
            key = body_key(key)  # '$$set': the key '$set' (Amplitude's user property operations)
            compiled = self.value(sub, sub_where, scope)
            if isinstance(compiled, Const):
                if compiled.value is not None:
                    consts[str(key)] = compiled.value
            else:
                dynamic.append((str(key), compiled))
        return _object_builder(consts, dynamic, merges)

    def _directive(self, spec: dict[Any, Any], directives: list[str], where: Where, scope: Scope) -> Compiled:
        name = directives[0]
        if name == "$literal" and len(spec) == 1:
            literal = spec["$literal"]
            if isinstance(literal, dict | list):
                return lambda ctx: copy.deepcopy(literal)
            return Const(literal)
        if name == "$if" and set(spec) <= {"$if", "then", "else"}:
            cond = as_getter(self.value(spec["$if"], where.child("$if", spec), scope))
            then = as_getter(self.value(spec.get("then"), where.child("then", spec), scope))
            otherwise = as_getter(self.value(spec.get("else"), where.child("else", spec), scope))
            return lambda ctx: then(ctx) if cond(ctx) else otherwise(ctx)
        allowed = "'$literal' alone, or '$if' with 'then'/'else'"
        return self.problem(where, f"bad directive {name!r}: use {allowed}, or '$merge' inside an object "
                                   f"('${name}' is a key starting with '$')")

    # --- expressions ---------------------------------------------------------------------------------
    def _expression(self, expr: Expression, where: Where, scope: Scope) -> Compiled:
        head = self._head(expr.head, where, scope)
        steps: list[tuple[Callable[..., Any], list[Compiled], bool, str]] = []
        for call in expr.steps:
            function = REGISTRY.get(call.name)
            if function is None:
                self.problem(where, f"unknown function {call.name!r}")
                continue
            args = self._arguments(call, where, scope)
            folded = _fold_condition(call.name, args)
            if folded is _KEEP:
                continue  # when(true) / unless(false): the step does nothing
            if folded is _DROP:
                return Const(None)  # when(false) / unless(true): the whole value is absent
            steps.append((function.impl, args, function.null_aware, call.name))
        if not steps:
            return head
        return _pipeline(head, steps, where)

    def _head(self, head: PathRef | Literal | Call, where: Where, scope: Scope) -> Compiled:
        if isinstance(head, Literal):
            return Const(head.value)
        if isinstance(head, PathRef):
            return self._path(head, where, scope)
        function = REGISTRY.get(head.name)
        if function is None:
            return self.problem(where, f"unknown function {head.name!r}")
        if not function.head:
            return self.problem(where, f"{head.name} needs a piped value: write '$field | {head.name}(...)'")
        if not head.args:
            return self.problem(where, f"{head.name}() needs at least one argument")
        first, rest = head.args[0], Call(head.name, head.args[1:])
        first_getter = as_getter(self._head(first, where, scope))
        args = self._arguments(rest, where, scope, offset=1)
        return _pipeline(first_getter, [(function.impl, args, True, head.name)], where)

    def _arguments(self, call: Call, where: Where, scope: Scope, offset: int = 0) -> list[Compiled]:
        function = REGISTRY[call.name]
        count = len(call.args) + offset
        if not function.min_args <= count <= function.max_args:
            expected = (str(function.min_args) if function.min_args == function.max_args
                        else f"{function.min_args} to {function.max_args}")
            self.problem(where, f"{call.name} takes {expected} argument(s), got {count}")
        args: list[Compiled] = []
        for index, arg in enumerate(call.args):
            kind = function.arg_kinds[index + offset] if index + offset < len(function.arg_kinds) else "any"
            args.append(self._argument(arg, kind, call.name, where, scope))
        return args

    def _argument(self, arg: PathRef | Literal, kind: str, name: str, where: Where, scope: Scope) -> Compiled:
        if isinstance(arg, PathRef):
            if kind != "any":
                return self.problem(where, f"{name}: this argument must be a literal {kind}, not a path")
            return self._path(arg, where, scope)
        if kind == "table":
            if arg.value not in self.tables:
                known = ", ".join(sorted(self.tables)) or "none defined"
                return self.problem(where, f"{name}: unknown table {arg.value!r} (tables: {known})")
            return Const(self.tables[arg.value])
        if kind in ("int", "count") and (not isinstance(arg.value, int) or isinstance(arg.value, bool)):
            return self.problem(where, f"{name}: argument must be an integer, got {arg.value!r}")
        if kind == "count" and arg.value < 0:
            return self.problem(where, f"{name}: argument must be 0 or more, got {arg.value!r}")
        return Const(arg.value)

    def _path(self, ref: PathRef, where: Where, scope: Scope) -> Compiled:
        if ref.parts[0] == "options":
            name = ref.parts[1] if len(ref.parts) == 2 else None
            if name not in self.options:
                known = ", ".join(sorted(self.options)) or "none defined"
                return self.problem(where, f"{ref.text}: unknown option (options: {known})")
            return Const(self.options[name])
        message = scope.check(ref)
        if message:
            return self.problem(where, f"{ref.text}: {message}")
        return Path(ref.parts)


_KEEP, _DROP = object(), object()


def _fold_condition(name: str, args: list[Compiled]) -> object:
    """Constant folding for when()/unless() on a compile-time constant such as ``$options.send_content``."""
    if name not in ("when", "unless") or len(args) != 1 or not isinstance(args[0], Const):
        return None
    truthy = bool(args[0].value)
    return _KEEP if truthy == (name == "when") else _DROP


def is_directive(key: Any) -> bool:
    """``$if``, ``$literal`` (and any other ``$word``, reported as unknown): not ``$merge``, not ``$$word``."""
    return isinstance(key, str) and key.startswith("$") and key != "$merge" and not key.startswith("$$")


def body_key(key: Any) -> Any:
    """The key a body spec's ``key`` writes: ``'$$name'`` the literal key ``'$name'``, any other as it is."""
    return key[1:] if isinstance(key, str) and key.startswith("$$") else key


def _looks_like_call(text: str) -> bool:
    """``coalesce($a, $b)`` style head calls: a registry name directly followed by '('."""
    name, paren, _ = text.partition("(")
    return bool(paren) and name.strip() in REGISTRY and REGISTRY[name.strip()].head


def _object_builder(consts: dict[str, Any], dynamic: list[tuple[str, Getter | Path]],
                    merges: list[Getter]) -> Getter:
    """Build an object per record: scalar constants copied, bare paths read inline, other fields called.

    Paths ``$a`` and ``$a.b`` are the most common field values; reading them here instead of through a
    closure per field is what keeps the engine near hand-written speed.
    """
    top: list[tuple[str, str]] = []
    nested: dict[str, list[tuple[str, str]]] = {}
    calls: list[tuple[str, Getter]] = []
    for key, compiled in dynamic:
        parts = compiled.parts if isinstance(compiled, Path) else None
        if parts is not None and len(parts) == 1 and isinstance(parts[0], str):
            top.append((key, parts[0]))
        elif parts is not None and len(parts) == 2 and all(isinstance(p, str) for p in parts):
            nested.setdefault(str(parts[0]), []).append((key, str(parts[1])))
        else:
            calls.append((key, as_getter(compiled)))
    groups = list(nested.items())

    def build(ctx: dict[str, Any]) -> dict[str, Any]:
        out = consts.copy()
        for key, name in top:
            value = ctx.get(name)
            if value is not None:
                out[key] = value
        for root, fields in groups:
            inner = ctx.get(root)
            if inner.__class__ is dict:
                for key, name in fields:
                    value = inner.get(name)
                    if value is not None:
                        out[key] = value
        for key, getter in calls:
            value = getter(ctx)
            if value is not None:
                out[key] = value
        for merge in merges:
            extra = merge(ctx)
            if isinstance(extra, dict):
                out.update((k, v) for k, v in extra.items() if v is not None)
        return out

    return build


def _pipeline(head_compiled: Compiled, steps: list[tuple[Callable[..., Any], list[Compiled], bool, str]],
              where: Where) -> Getter:
    """Chain ``head`` through registry functions; a null input stops the chain unless a step is null-aware.

    The common shape (every argument a constant) is specialised: it is the hot path of most mappings.
    """
    plan: list[tuple[Callable[..., Any], tuple[Any, ...] | None, list[Getter] | None, bool, str]] = []
    for impl, args, null_aware, name in steps:
        if all(isinstance(a, Const) for a in args):
            plan.append((impl, tuple(a.value for a in args if isinstance(a, Const)), None, null_aware, name))
        else:
            plan.append((impl, None, [as_getter(a) for a in args], null_aware, name))
    head = as_getter(head_compiled)
    if len(plan) == 1 and plan[0][1] is not None:
        if (isinstance(head_compiled, Path) and len(head_compiled.parts) == 2 and not plan[0][3]
                and all(isinstance(part, str) for part in head_compiled.parts)):
            return _single_step_on_path(head_compiled, plan[0][0], plan[0][1], plan[0][4], where)
        return _single_step(head, plan[0][0], plan[0][1], plan[0][3], plan[0][4], where)

    def run(ctx: dict[str, Any]) -> Any:
        value = head(ctx)
        for impl, const_args, arg_getters, null_aware, name in plan:
            if value is None and not null_aware:
                return None
            try:
                if const_args is not None:
                    value = impl(value, *const_args)
                else:
                    assert arg_getters is not None
                    value = impl(value, *[g(ctx) for g in arg_getters])
            except MappingRuntimeError:
                raise
            except Exception as exc:  # a registry function failed on this record's data
                raise MappingRuntimeError(where, name, exc) from exc
        return value

    return run


def _single_step(head: Getter, impl: Callable[..., Any], args: tuple[Any, ...], null_aware: bool, name: str,
                 where: Where) -> Getter:
    def run_one(ctx: dict[str, Any]) -> Any:
        value = head(ctx)
        if value is None and not null_aware:
            return None
        try:
            return impl(value, *args)
        except Exception as exc:  # a registry function failed on this record's data
            raise MappingRuntimeError(where, name, exc) from exc

    return run_one


def _single_step_on_path(path: Path, impl: Callable[..., Any], args: tuple[Any, ...], name: str,
                         where: Where) -> Getter:
    root, field = str(path.parts[0]), path.parts[1]

    def run_on_path(ctx: dict[str, Any]) -> Any:
        value = ctx.get(root)
        if value.__class__ is not dict:
            return None
        value = value.get(field)
        if value is None:
            return None
        try:
            return impl(value, *args)
        except Exception as exc:  # a registry function failed on this record's data
            raise MappingRuntimeError(where, name, exc) from exc

    return run_on_path


def path_getter(parts: tuple[str | int, ...]) -> Getter:
    """A getter for a fixed path; missing keys, wrong types and out-of-range indexes give None."""
    if len(parts) == 1 and isinstance(parts[0], str):
        key = parts[0]
        return lambda ctx: ctx.get(key)
    if len(parts) == 2 and isinstance(parts[0], str) and isinstance(parts[1], str):
        first, second = str(parts[0]), str(parts[1])

        def get2(ctx: dict[str, Any]) -> Any:
            value = ctx.get(first)
            return value.get(second) if value.__class__ is dict else None

        return get2

    def get_n(ctx: dict[str, Any]) -> Any:
        value: Any = ctx
        for part in parts:
            if isinstance(value, dict):
                value = value.get(str(part))
            elif isinstance(value, list) and isinstance(part, int):
                value = value[part] if -len(value) <= part < len(value) else None
            else:
                return None
            if value is None:
                return None
        return value

    return get_n
