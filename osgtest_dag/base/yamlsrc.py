"""YAML loading that remembers where every value came from.

PyYAML's plain loaders forget positions and silently keep the last of two duplicated keys;
users need `file:line:column` in every error, so we compose nodes ourselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from osgtest_dag.base.errors import Location, UserError

Key = tuple[Any, ...]  # a path into the document: ("package_sets", 2, "label")


@dataclass(frozen=True)
class Document:
    """Plain Python data plus the location of each value, keyed by its path."""

    path: Path
    data: Any
    locations: dict[Key, Location]

    def where(self, *key: Any) -> Location:
        """Location of the value at `key`, or of the closest enclosing value we know."""
        k = tuple(key)
        while k not in self.locations and k:
            k = k[:-1]
        return self.locations.get(k, Location(self.path))

    def key_where(self, *key: Any) -> Location:
        """Location of a mapping key itself (for "unknown key" errors)."""
        return self.locations.get(("__key__",) + tuple(key), self.where(*key))


def _loc(path: Path, node: yaml.Node) -> Location:
    col = node.start_mark.column + 1
    if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"'):
        col += 1  # point inside the quotes, where the text starts
    return Location(path, node.start_mark.line + 1, col)


def load(path: Path, text: str | None = None) -> Document:
    """Load one YAML document from `path`, raising UserError with file:line on any problem."""
    path = Path(path)
    if text is None:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read: {e.strerror}", where=path) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise UserError(
                "not valid UTF-8 text", where=Location(path, line), hint="save the file as UTF-8"
            ) from None
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = Location(path, mark.line + 1, mark.column + 1) if mark else Location(path)
        problem = e.problem or e.context or "YAML syntax error"
        raise UserError(
            f"YAML syntax error: {problem}",
            where=where,
            hint="check indentation, and quote values that contain ': ' or start with special characters",
        ) from None
    except yaml.YAMLError as e:
        raise UserError(f"YAML error: {e}", where=path) from None
    if len(nodes) > 1:
        raise UserError(
            "more than one YAML document in the file",
            where=_loc(path, nodes[1]),
            hint="keep one document per parameter file (remove the extra '---')",
        )
    locations: dict[Key, Location] = {}
    if not nodes or nodes[0] is None:
        return Document(path, None, locations)
    constructor = yaml.SafeLoader("")  # for scalar resolution (bools, ints ...)

    def convert(node: yaml.Node, key: Key) -> Any:
        locations[key] = _loc(path, node)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                if not isinstance(knode, yaml.ScalarNode):
                    raise UserError("mapping keys must be plain names", where=_loc(path, knode))
                k = constructor.construct_object(knode, deep=True)
                if k == "<<":
                    raise UserError("YAML merge keys ('<<') are not supported here", where=_loc(path, knode))
                if k in out:
                    first = locations[("__key__",) + key + (k,)]
                    raise UserError(
                        f"duplicate key {k!r} (first at line {first.line})",
                        where=_loc(path, knode),
                        hint="remove or merge one of them",
                    )
                locations[("__key__",) + key + (k,)] = _loc(path, knode)
                out[k] = convert(vnode, key + (k,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [convert(v, key + (i,)) for i, v in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    try:
        data = convert(nodes[0], ())
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        raise UserError(
            f"YAML error: {e.problem}", where=Location(path, mark.line + 1, mark.column + 1) if mark else path
        ) from None
    return Document(path, data, locations)
