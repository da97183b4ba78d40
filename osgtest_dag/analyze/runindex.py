"""The run index of a runs root: what the history needs of every run's results.json, in one
SQLite file in the runs root (RUNS_ROOT/.osgtest-dag-history.sqlite).

The index is a cache, never the only copy of a fact: every row comes from a results.json and
the whole file can be deleted at any time. Each call brings it up to date first, incrementally:
a results.json whose mtime, size and inode are those recorded is not opened; one that changed is read
and its digest compared, and only a new digest is parsed again; runs gone from the root are
dropped. An index that is missing, unreadable (corrupt, not SQLite) or of another schema version
is rebuilt from the run directories. An update is one transaction: a build killed half-way
leaves the index as it was before (or no usable index, which the next call rebuilds).

A runs root the user cannot write gets an index in memory for the call (and a warning).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path

from osgtest_dag.base.errors import UserError
from osgtest_dag.model.documents import parse_json
from osgtest_dag.model.history import DEFAULT_LAST, CellKey, CellRun, History, RunCells, compute
from osgtest_dag.model.manifest import RunManifest
from osgtest_dag.model.outcome import Outcome
from osgtest_dag.model.results import ResultsDocument
from osgtest_dag.model.rundir import RunDir

log = logging.getLogger(__name__)

INDEX_NAME = ".osgtest-dag-history.sqlite"
# Bump when the tables change, or what a row means: an index of another version is rebuilt.
SCHEMA_VERSION = 1
_TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # One row per run directory with a results.json; `error` when it cannot be read (then it
    # has no results rows, and is read again once it changes).
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        dir TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        generated TEXT,
        mtime_ns INTEGER NOT NULL,
        size INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        digest TEXT NOT NULL,
        error TEXT)""",
    # Cell identities (platform id, raw source, label), with the names of their latest reading.
    """CREATE TABLE cells (
        id INTEGER PRIMARY KEY,
        platform TEXT NOT NULL,
        source TEXT NOT NULL,
        label TEXT NOT NULL,
        platform_name TEXT NOT NULL,
        source_display TEXT NOT NULL,
        UNIQUE (platform, source, label))""",
    """CREATE TABLE results (
        run INTEGER NOT NULL,
        cell INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        install_s REAL,
        test_s REAL,
        PRIMARY KEY (run, cell)) WITHOUT ROWID""",
)
LOCK_TIMEOUT_S = 120.0  # another process (a nightly's Report node) updating the same index
NO_RUNS_HINT = "a runs root holds run directories (RUN/run.json); analyze them with `osgtest-dag analyze RUN`"


@dataclass(frozen=True)
class UpdateReport:
    """What bringing the index up to date did."""

    rebuilt: str | None = None  # why the index was made anew (missing, corrupt, other version)
    read: int = 0  # results.json parsed
    kept: int = 0  # unchanged (by mtime and size, or by digest)
    dropped: int = 0  # runs no longer in the root
    unanalyzed: tuple[str, ...] = ()  # run directories without results.json
    unreadable: tuple[tuple[str, str], ...] = ()  # (run directory, why)
    in_memory: bool = False


@dataclass(frozen=True)
class _Scanned:
    dir: str
    results: Path
    stat: os.stat_result | None  # None: not analyzed yet


@dataclass
class _Counter:
    read: int = 0
    kept: int = 0
    dropped: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def index_path(runs_root: Path) -> Path:
    return Path(runs_root) / INDEX_NAME


def _scan(runs_root: Path) -> list[_Scanned]:
    """The run directories directly under `runs_root` (those with a run.json)."""
    found = []
    for child in sorted(runs_root.iterdir()):
        layout = RunDir(child)
        if child.name.startswith(".") or not child.is_dir() or not layout.manifest.is_file():
            continue
        try:
            st: os.stat_result | None = layout.results.stat()
        except FileNotFoundError:
            st = None
        found.append(_Scanned(child.name, layout.results, st))
    return found


# ------------------------------------------------------------------------------ the database
def _connect(path: Path | str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one update is one transaction.
    return sqlite3.connect(str(path), timeout=LOCK_TIMEOUT_S, isolation_level=None)


def _schema_problem(db: sqlite3.Connection) -> str | None:
    """Why the index's tables cannot be used as they are (None: they can)."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return "it has no tables (new, or its first build did not finish)"
        raise
    if row is None or row[0] != str(SCHEMA_VERSION):
        return f"it is of schema version {row[0] if row else '?'}, this tool's is {SCHEMA_VERSION}"
    return None


def _create(db: sqlite3.Connection) -> None:
    """The tables of this version, in place of whatever the file held."""
    old = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for name in old:
        db.execute(f'DROP TABLE "{name}"')
    for statement in _TABLES:
        db.execute(statement)
    db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)


def _read_results(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of results.json and the stat of the very file they came from."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        return f.read(), st


class _Writer:
    """Stores runs in the index, inside the caller's transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # (platform, source, label) -> (id, (platform name, source display))
        self.cells = {
            (p, s, lab): (i, (pn, sd))
            for i, p, s, lab, pn, sd in db.execute(
                "SELECT id, platform, source, label, platform_name, source_display FROM cells"
            )
        }

    def store(self, run_id: int | None, scanned: _Scanned, raw: bytes, st: os.stat_result) -> None:
        """(Re)place the run's rows with what `raw` (its results.json) says."""
        digest = hashlib.sha256(raw).hexdigest()
        doc, facts, error = None, [], None
        try:
            doc = ResultsDocument.from_json(parse_json(raw, scanned.results), scanned.results)
            facts = [_cell_facts(c) for c in doc.cells]
        except UserError as e:
            doc, error = None, str(e)
        except (ValueError, TypeError, KeyError) as e:  # a cell entry that is not docs/results.md's
            doc, error = None, f"{scanned.results}: a cell entry is malformed: {e}"
        if run_id is not None:
            self.db.execute("DELETE FROM results WHERE run = ?", (run_id,))
            self.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        cur = self.db.execute(
            "INSERT INTO runs (dir, name, generated, mtime_ns, size, ino, digest, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                scanned.dir,
                doc.run.name if doc else scanned.dir,
                doc.run.generated if doc else None,
                st.st_mtime_ns,
                st.st_size,
                st.st_ino,
                digest,
                error,
            ),
        )
        if doc is None:
            return
        new_id = cur.lastrowid
        rows = [(new_id, self._cell_id(ident, names), *rest) for ident, names, rest in facts]
        # A cell twice in one run (it cannot be, after the matrix's de-duplication): the first wins.
        self.db.executemany(
            "INSERT OR IGNORE INTO results (run, cell, outcome, install_s, test_s) VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    def _cell_id(self, ident: tuple[str, str, str], names: tuple[str, str]) -> int:
        found = self.cells.get(ident)
        if found is None:
            cur = self.db.execute(
                "INSERT INTO cells (platform, source, label, platform_name, source_display) VALUES (?, ?, ?, ?, ?)",
                (*ident, *names),
            )
            self.cells[ident] = (int(cur.lastrowid or 0), names)
            return int(cur.lastrowid or 0)
        if found[1] != names:  # renamed in the catalog: show the latest stored names
            self.db.execute(
                "UPDATE cells SET platform_name = ?, source_display = ? WHERE id = ?", (*names, found[0])
            )
            self.cells[ident] = (found[0], names)
        return found[0]


def _seconds(durations: object, phase: str) -> float | None:
    value = durations.get(phase) if isinstance(durations, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell_facts(
    c: dict,
) -> tuple[tuple[str, str, str], tuple[str, str], tuple[str, float | None, float | None]]:
    """(identity, names, (outcome, install seconds, test seconds)) of a results.json cell."""
    plat, src = c["platform"], c["source"]
    ident = (str(plat["id"] or ""), str(src["raw"] or ""), str(c["label"] or ""))
    names = (str(plat.get("name") or ident[0]), str(src.get("display") or ident[1]))
    durations = c.get("durations")
    outcome = Outcome.parse(str(c["outcome"])).value
    return ident, names, (outcome, _seconds(durations, "install"), _seconds(durations, "test"))


def _update(db: sqlite3.Connection, scanned: list[_Scanned]) -> _Counter:
    """Bring the tables in line with the run directories (inside the caller's transaction)."""
    counter = _Counter()
    known = {
        d: (i, (m, s, n), g)
        for i, d, m, s, n, g in db.execute("SELECT id, dir, mtime_ns, size, ino, digest FROM runs")
    }
    writer = _Writer(db)
    present = set()
    for sc in scanned:
        if sc.stat is None:
            continue
        old = known.get(sc.dir)
        if old and old[1] == (sc.stat.st_mtime_ns, sc.stat.st_size, sc.stat.st_ino):
            present.add(sc.dir)
            counter.kept += 1
            continue
        try:
            raw, st = _read_results(sc.results)
        except OSError as e:
            counter.unreadable.append((sc.dir, f"cannot read results.json: {e}"))
            continue
        present.add(sc.dir)
        if old and hashlib.sha256(raw).hexdigest() == old[2]:
            db.execute(
                "UPDATE runs SET mtime_ns = ?, size = ?, ino = ? WHERE id = ?",
                (st.st_mtime_ns, st.st_size, st.st_ino, old[0]),
            )
            counter.kept += 1
            continue
        writer.store(old[0] if old else None, sc, raw, st)
        counter.read += 1
    for d, (run_id, *_) in known.items():
        if d not in present:
            db.execute("DELETE FROM results WHERE run = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            counter.dropped += 1
    if counter.dropped:
        db.execute("DELETE FROM cells WHERE id NOT IN (SELECT DISTINCT cell FROM results)")
    counter.unreadable += [
        (d, str(err)) for d, err in db.execute("SELECT dir, error FROM runs WHERE error IS NOT NULL")
    ]
    return counter


def _window(db: sqlite3.Connection, last: int, until: str | None) -> list[RunCells]:
    """The last `last` readable runs (oldest first), ending with the run directory `until`."""
    runs = db.execute(
        "SELECT id, dir, name, generated FROM runs WHERE error IS NULL ORDER BY coalesce(generated, ''), dir"
    ).fetchall()
    if until is not None:
        ends = [i for i, r in enumerate(runs) if r[1] == until]
        runs = runs[: ends[0] + 1] if ends else []
    runs = runs[-last:]
    by_id: dict[int, dict[CellKey, CellRun]] = {r[0]: {} for r in runs}
    if runs:
        marks = ",".join("?" * len(runs))
        query = (
            "SELECT r.run, c.platform, c.source, c.label, c.platform_name, c.source_display, "
            "r.outcome, r.install_s, r.test_s FROM results r JOIN cells c ON c.id = r.cell "
            f"WHERE r.run IN ({marks})"
        )
        for run_id, plat, src, label, plat_name, src_display, outcome, inst, test in db.execute(
            query, [r[0] for r in runs]
        ):
            by_id[run_id][CellKey(plat, src, label)] = CellRun(
                Outcome(outcome), inst, test, plat_name, src_display
            )
    return [RunCells(name, generated, by_id[i]) for i, _, name, generated in runs]


# ------------------------------------------------------------------------------ entry points
def _writable(runs_root: Path, path: Path) -> bool:
    return os.access(runs_root, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _refresh(
    db: sqlite3.Connection, scanned: list[_Scanned], last: int, until: str | None
) -> tuple[str | None, _Counter, list[RunCells]]:
    """One transaction: check the tables (made anew when missing or of another version), update
    them, read the window back. Returns (why the tables were made anew, or None; ...)."""
    db.execute("BEGIN IMMEDIATE")  # waits for another process's update, then sees its result
    try:
        problem = _schema_problem(db)
        if problem is not None:
            _create(db)
        counter = _update(db, scanned)
        runs = _window(db, last, until)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return problem, counter, runs


def load(
    runs_root: Path | str, last: int = DEFAULT_LAST, until: str | None = None
) -> tuple[list[RunCells], UpdateReport]:
    """Bring the index of `runs_root` up to date and read back its last `last` runs (ending
    with the run directory named `until`, when given)."""
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        raise UserError(
            "the runs root is not a directory",
            where=runs_root,
            hint="give the directory whose subdirectories are run directories (as `nightly` makes them)",
        )
    scanned = _scan(runs_root)
    path = index_path(runs_root)
    in_memory = not _writable(runs_root, path)
    if in_memory:
        log.warning("%s is not writable: the run index is built in memory for this call", runs_root)
    damaged = None
    while True:
        missing = not in_memory and not path.exists()
        db = _connect(":memory:" if in_memory else path)
        try:
            problem, counter, runs = _refresh(db, scanned, last, until)
            break
        except sqlite3.DatabaseError as e:
            # Not SQLite, or a damaged page: it is a cache, so it is made again (once).
            if in_memory or damaged is not None:
                raise
            damaged = f"it was unreadable ({e})"
            log.warning("the run index %s is unreadable (%s): rebuilding it", path, e)
        finally:
            db.close()
        _remove(path)
    rebuilt = damaged or ("missing" if missing or in_memory else problem)
    if rebuilt:
        log.info("run index %s built anew: %s", path, rebuilt)
    report = UpdateReport(
        rebuilt=rebuilt,
        read=counter.read,
        kept=counter.kept,
        dropped=counter.dropped,
        unanalyzed=tuple(s.dir for s in scanned if s.stat is None),
        unreadable=tuple(counter.unreadable),
        in_memory=in_memory,
    )
    for d, why in report.unreadable:
        log.warning("%s: left out of the history: %s", runs_root / d, why)
    return runs, report


def history(runs_root: Path | str, last: int = DEFAULT_LAST, until: str | None = None) -> History:
    """The history of `runs_root` over its last `last` analyzed runs; UserError when it has none."""
    runs, report = load(runs_root, last, until)
    if not runs:
        found = f" ({len(report.unanalyzed)} run directories not analyzed yet)" if report.unanalyzed else ""
        raise UserError(f"no analyzed run in the runs root{found}", where=runs_root, hint=NO_RUNS_HINT)
    return compute(runs, last)


def nightly_history(run_dir: Path | str, last: int = DEFAULT_LAST) -> History | None:
    """For a nightly's report and e-mail: the history of its runs root (the run directory's
    parent) up to this run. None for a run not marked nightly, or when the history cannot be
    had (the report goes out without it, and the log says why)."""
    run_dir = Path(run_dir).resolve()
    if not RunManifest.read(run_dir).options.nightly:
        return None
    try:
        return history(run_dir.parent, last, until=run_dir.name)
    except (UserError, OSError, sqlite3.Error) as e:
        log.warning("no history for the report of %s: %s", run_dir, e)
        return None
