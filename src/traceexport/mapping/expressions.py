"""Parse the small expression language used in mapping values.

::

    "$derived.model"                               a path into the record
    "$metadata.user_id | sha256(16)"               a pipeline of registry functions
    "coalesce($trace_id, $message_id) | trace_id"  a head function
    "chat {{ $derived.model }}"                     a template (any text with {{ ... }})

Arguments are paths, numbers, quoted text, true/false/null, or bare words (taken as text, e.g. a
table name). Parsing never evaluates anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<path>\$[^\s|(),]+)
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<name>[A-Za-z_][\w.\-/]*)
      | (?P<punct>[|(),])
    )""",
    re.VERBOSE,
)
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.)", re.DOTALL)
_ESCAPED = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


class ExpressionSyntaxError(ValueError):
    """The expression text is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class PathRef:
    """A reference to a value in the record: ``$a.b.0.c``."""

    parts: tuple[str | int, ...]

    @property
    def text(self) -> str:
        return "$" + ".".join(str(p) for p in self.parts)


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(slots=True)
class Call:
    name: str
    args: list[PathRef | Literal] = field(default_factory=list)


@dataclass(slots=True)
class Expression:
    """``head | step | step``: head is a path, a literal or a head-function call."""

    head: PathRef | Literal | Call
    steps: list[Call]


def parse_path(text: str) -> PathRef:
    body = text[1:]
    if not body:
        raise ExpressionSyntaxError("'$' must be followed by a field name")
    parts: list[str | int] = []
    for part in body.split("."):
        if part == "":
            raise ExpressionSyntaxError(f"empty segment in path {text!r}")
        parts.append(int(part) if part.isdigit() else part)
    return PathRef(tuple(parts))


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    stripped_end = len(text.rstrip())
    while pos < stripped_end:
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExpressionSyntaxError(f"unexpected {text[pos:].strip()[:20]!r} at column {pos + 1}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _literal(kind: str, value: str) -> Literal:
    if kind == "number":
        return Literal(float(value) if any(c in value for c in ".eE") else int(value))
    if kind == "string":
        return Literal(_unescape(value[1:-1]) if "\\" in value else value[1:-1])
    return Literal({"true": True, "false": False, "null": None}.get(value, value))


def _unescape(text: str) -> str:
    """Quoted text with its escapes read (any other character, non-ASCII included, stays as written)."""

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if len(code) == 5:
            return chr(int(code[1:], 16))
        if code not in _ESCAPED:
            raise ExpressionSyntaxError(f"unknown escape '\\{code}' in quoted text (known: \\\\ \\' \\\" \\n \\t "
                                        "\\r \\uXXXX)")
        return _ESCAPED[code]

    return _ESCAPE.sub(one, text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ExpressionSyntaxError("unexpected end of expression")
        self.pos += 1
        return token

    def expect(self, punct: str) -> None:
        kind, value = self.take()
        if kind != "punct" or value != punct:
            raise ExpressionSyntaxError(f"expected {punct!r}, found {value!r}")

    def argument(self) -> PathRef | Literal:
        kind, value = self.take()
        if kind == "path":
            return parse_path(value)
        if kind in ("number", "string", "name"):
            return _literal(kind, value)
        raise ExpressionSyntaxError(f"unexpected {value!r} where an argument belongs")

    def call(self, name: str) -> Call:
        call = Call(name)
        token = self.peek()
        if token == ("punct", "("):
            self.take()
            if self.peek() == ("punct", ")"):
                self.take()
                return call
            while True:
                call.args.append(self.argument())
                kind, value = self.take()
                if (kind, value) == ("punct", ")"):
                    break
                if (kind, value) != ("punct", ","):
                    raise ExpressionSyntaxError(f"expected ',' or ')' in {name}(...), found {value!r}")
        return call

    def expression(self) -> Expression:
        kind, value = self.take()
        head: PathRef | Literal | Call
        if kind == "path":
            head = parse_path(value)
        elif kind == "name" and self.peek() == ("punct", "("):
            head = self.call(value)
        elif kind in ("number", "string", "name"):
            head = _literal(kind, value)
        else:
            raise ExpressionSyntaxError(f"an expression cannot start with {value!r}")
        steps: list[Call] = []
        while self.peek() is not None:
            self.expect("|")
            kind, value = self.take()
            if kind != "name":
                raise ExpressionSyntaxError(f"expected a function name after '|', found {value!r}")
            steps.append(self.call(value))
        return Expression(head, steps)


def parse_expression(text: str) -> Expression:
    """Parse ``text`` (without template braces) into an Expression."""
    return _Parser(text).expression()


def split_template(text: str) -> list[str | Expression]:
    """Literal text and parsed ``{{ expression }}`` parts of a template string."""
    parts: list[str | Expression] = []
    pos = 0
    for match in _TEMPLATE.finditer(text):
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        inner = match.group(1).strip()
        if not inner:
            raise ExpressionSyntaxError("empty {{ }} in template")
        parts.append(parse_expression(inner))
        pos = match.end()
    if "{{" in text[pos:]:
        raise ExpressionSyntaxError("'{{' without its closing '}}' in template")
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def is_template(text: str) -> bool:
    return "{{" in text
