"""Read a DAGMan DAG file into a model: what the local executor runs and `check` validates.

Covers the DAGMan commands our workflows use and the common rest (JOB, SUBDAG EXTERNAL,
FINAL, VARS incl. ALL_NODES, RETRY ... UNLESS-EXIT, SCRIPT [DEFER] PRE/POST, PRE_SKIP,
PRIORITY, CATEGORY, MAXJOBS, PARENT ... CHILD, ABORT-DAG-ON, CONFIG, NODE_STATUS_FILE).
Anything else is an error naming the line: silently running a different DAG than DAGMan
would is worse than refusing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from osgtest_dag.base.errors import Location, UserError

if TYPE_CHECKING:
    import networkx as nx

_VARS = re.compile(r'\s*([A-Za-z_+][\w.+]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
IGNORED = {
    "DOT",
    "JOBSTATE_LOG",
    "NODE_STATUS_FILE",
    "SET_JOB_ATTR",
    "ENV",
    "REJECT",
    "SAVE_POINT_FILE",
    "DONE",
}


@dataclass
class Script:
    executable: str
    arguments: list[str]
    defer_status: int | None = None
    defer_time: int = 0


@dataclass
class Node:
    name: str
    submit_file: str | None  # None for SUBDAG EXTERNAL (see dag_file)
    kind: str = "job"  # job | subdag | final
    dag_file: str | None = None
    dir: str | None = None
    noop: bool = False
    done: bool = False
    vars: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    retry_unless_exit: int | None = None
    pre: Script | None = None
    post: Script | None = None
    pre_skip: int | None = None
    priority: int = 0
    category: str | None = None
    abort_on: tuple[int, int | None] | None = None
    line: int = 0


@dataclass
class Dag:
    path: Path
    nodes: dict[str, Node]
    edges: list[tuple[str, str]]
    maxjobs: dict[str, int]
    config: str | None
    node_status_file: str | None
    final: str | None

    def graph(self) -> nx.DiGraph[str]:
        import networkx as nx  # heavy: 0.1 s, and only graph checks need it (not every DAG node)

        g: nx.DiGraph[str] = nx.DiGraph()
        for name in self.nodes:
            if name != self.final:
                g.add_node(name)
        g.add_edges_from(self.edges)
        return g


def parse(path: Path) -> Dag:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UserError(f"cannot read DAG file: {e.strerror}", where=path) from None
    nodes: dict[str, Node] = {}
    edges: list[tuple[str, str]] = []
    maxjobs: dict[str, int] = {}
    config = status = final = None
    pending_all_vars: dict[str, str] = {}
    deferred: list[tuple[int, list[str]]] = []  # node-referencing lines, after all JOBs

    def err(n: int, msg: str, hint: str | None = None) -> NoReturn:
        raise UserError(msg, where=Location(path, n), hint=hint)

    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word = line.split(None, 1)[0].upper()
        try:
            toks = shlex.split(line, posix=True) if word != "VARS" else line.split(None, 2)
        except ValueError as e:
            err(n, f"cannot split line: {e}")
        if word == "JOB" or word == "FINAL":
            if len(toks) < 3:
                err(n, f"{word} needs a node name and a submit file")
            name, sub = toks[1], toks[2]
            if name in nodes:
                err(n, f"node {name!r} defined twice (first at line {nodes[name].line})")
            node = Node(name=name, submit_file=sub, kind="final" if word == "FINAL" else "job", line=n)
            rest = [t.upper() for t in toks[3:]]
            i = 0
            while i < len(rest):
                if rest[i] == "DIR" and i + 1 < len(rest):
                    node.dir = toks[3 + i + 1]
                    i += 2
                elif rest[i] == "NOOP":
                    node.noop, i = True, i + 1
                elif rest[i] == "DONE":
                    node.done, i = True, i + 1
                else:
                    err(n, f"unexpected {toks[3 + i]!r} after JOB")
            nodes[name] = node
            if word == "FINAL":
                final = name
        elif word == "SUBDAG":
            if len(toks) < 4 or toks[1].upper() != "EXTERNAL":
                err(n, "expected SUBDAG EXTERNAL NAME FILE")
            name = toks[2]
            if name in nodes:
                err(n, f"node {name!r} defined twice")
            nodes[name] = Node(name=name, submit_file=None, kind="subdag", dag_file=toks[3], line=n)
        elif word == "CONFIG":
            config = toks[1] if len(toks) > 1 else err(n, "CONFIG needs a file")
        elif word == "MAXJOBS":
            if len(toks) != 3 or not toks[2].isdigit():
                err(n, "expected MAXJOBS CATEGORY N")
            maxjobs[toks[1]] = int(toks[2])
        elif word == "NODE_STATUS_FILE":
            status = toks[1] if len(toks) > 1 else None
        elif word in (
            "VARS",
            "RETRY",
            "SCRIPT",
            "PRIORITY",
            "CATEGORY",
            "PARENT",
            "ABORT-DAG-ON",
            "PRE_SKIP",
        ):
            deferred.append((n, toks))
        elif word in IGNORED:
            continue
        else:
            err(n, f"unknown or unsupported DAG command {toks[0]!r}")

    def node_of(n: int, name: str) -> Node:
        if name not in nodes:
            err(n, f"node {name!r} is not defined", "define it with a JOB line")
        return nodes[name]

    for n, toks in deferred:
        word = toks[0].upper()
        if word == "VARS":
            if len(toks) < 3:
                err(n, 'VARS needs a node name and name="value" pairs')
            pairs = {}
            text = toks[2]
            pos = 0
            while pos < len(text):
                m = _VARS.match(text, pos)
                if not m:
                    if text[pos:].strip():
                        err(n, f"bad VARS syntax near {text[pos : pos + 30]!r}", 'write name="value"')
                    break
                pairs[m.group(1)] = re.sub(r"\\(.)", r"\1", m.group(2))
                pos = m.end()
            if toks[1] == "ALL_NODES":
                pending_all_vars.update(pairs)
            else:
                node_of(n, toks[1]).vars.update(pairs)
        elif word == "RETRY":
            node = node_of(n, toks[1])
            if len(toks) < 3 or not toks[2].isdigit():
                err(n, "expected RETRY NODE N [UNLESS-EXIT CODE]")
            node.retries = int(toks[2])
            if len(toks) >= 5 and toks[3].upper() == "UNLESS-EXIT":
                node.retry_unless_exit = int(toks[4])
        elif word == "SCRIPT":
            i = 1
            defer = None
            if toks[i].upper() == "DEFER":
                defer = (int(toks[i + 1]), int(toks[i + 2]))
                i += 3
            which = toks[i].upper()
            node = node_of(n, toks[i + 1])
            script = Script(
                executable=toks[i + 2],
                arguments=toks[i + 3 :],
                defer_status=defer[0] if defer else None,
                defer_time=defer[1] if defer else 0,
            )
            if which == "PRE":
                node.pre = script
            elif which == "POST":
                node.post = script
            else:
                err(n, f"SCRIPT type must be PRE or POST, not {which!r}")
        elif word == "PRE_SKIP":
            node_of(n, toks[1]).pre_skip = int(toks[2])
        elif word == "PRIORITY":
            node_of(n, toks[1]).priority = int(toks[2])
        elif word == "CATEGORY":
            node_of(n, toks[1]).category = toks[2]
        elif word == "ABORT-DAG-ON":
            ret = int(toks[4]) if len(toks) >= 5 and toks[3].upper() == "RETURN" else None
            node_of(n, toks[1]).abort_on = (int(toks[2]), ret)
        elif word == "PARENT":
            upper = [t.upper() for t in toks]
            if "CHILD" not in upper:
                err(n, "PARENT without CHILD")
            c = upper.index("CHILD")
            parents, children = toks[1:c], toks[c + 1 :]
            if not parents or not children:
                err(n, "PARENT ... CHILD ... needs nodes on both sides")
            for p in parents:
                for ch in children:
                    for name in (p, ch):
                        if node_of(n, name).kind == "final":
                            err(n, f"the FINAL node {name!r} cannot have parents or children")
                    edges.append((p, ch))
    if pending_all_vars:
        for node in nodes.values():
            node.vars = {**pending_all_vars, **node.vars}
    return Dag(
        path=path,
        nodes=nodes,
        edges=edges,
        maxjobs=maxjobs,
        config=config,
        node_status_file=status,
        final=final,
    )


def check(dag: Dag, base: Path | None = None) -> None:
    """Acyclic, and every file the DAG names exists (submit files, sub-DAGs, config)."""
    base = Path(base) if base else dag.path.parent
    g = dag.graph()
    import networkx as nx  # heavy: as above

    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        raise UserError(f"the DAG has a cycle: {' -> '.join(a for a, _ in cycle)}", where=dag.path)
    for node in dag.nodes.values():
        f = node.dag_file if node.kind == "subdag" else node.submit_file
        d = base / node.dir if node.dir else base
        if f and not node.noop and not (d / f).is_file():
            raise UserError(
                f"node {node.name} refers to a missing file {f}", where=Location(dag.path, node.line)
            )
    if dag.config and not (base / dag.config).is_file():
        raise UserError(f"missing DAGMan config file {dag.config}", where=dag.path)
