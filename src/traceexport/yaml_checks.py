"""What the config's and the mappings' YAML readers share: a PyYAML error as the line of the text it points at
and a one-line reason (for a problem reported as ``file:line: reason``), and the bound on the values aliases
may add to a document.

A character YAML does not allow in a document (NUL, BEL, other C0 controls but tab and newlines) is refused by
PyYAML's reader with a message over two lines and no line number, before any parsing: it gets its line here.
A few hundred bytes of nested aliases ("billion laughs") stand for billions of values, which any walk of the
document (a mapping's compiler, the config's ``${ENV}`` substitution) would take until memory ran out.
"""

from __future__ import annotations

import yaml

# Values YAML aliases may add to a document (each ``*name`` adds its anchor's whole subtree again); the
# shipped mappings add under 1,000.
MAX_ALIAS_VALUES = 100_000


def yaml_error(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """The 1-based line ``exc`` points at in ``text`` (None when it names none) and its reason on one line."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        return line, f"unacceptable character #x{exc.character:04x}: {exc.reason}"
    mark = getattr(exc, "problem_mark", None)
    reason = getattr(exc, "problem", None) or str(exc)
    return (mark.line + 1 if mark is not None else None), " ".join(str(reason).split())


def alias_problem(root: yaml.Node) -> str | None:
    """Why the composed document ``root`` is refused (its aliases add more than :data:`MAX_ALIAS_VALUES`
    values: those it holds once every alias is replaced by a copy of its anchor, less those written out), or
    None."""
    expanded: dict[int, int] = {}  # node id -> values in its subtree with aliases expanded
    written: set[int] = set()

    def size(node: yaml.Node) -> int:
        known = expanded.get(id(node))
        if known is not None:
            return known
        written.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(key) + size(value) for key, value in node.value)
        expanded[id(node)] = total
        return total

    added = size(root) - len(written)
    if added <= MAX_ALIAS_VALUES:
        return None
    return (f"YAML aliases expand the file by {added:,} values (at most {MAX_ALIAS_VALUES:,}): write the values "
            "out or use fewer nested aliases")


__all__ = ["MAX_ALIAS_VALUES", "alias_problem", "yaml_error"]
