"""The results store: a Parquet dataset under DIR/<experiment>/results/, one file per cell attempt.

Files are written by the driver (see raysweep.trial.StoreCallback), so clusters need no shared
storage. Each file is written under a hidden temporary name and atomically renamed: a reader never
sees a partial file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

METRICS = [
    "loss",
    "total", "aleatoric", "epistemic",
    "total_std", "aleatoric_std", "epistemic_std",
    "total_var", "aleatoric_var", "epistemic_var",
    "nll", "accuracy", "error_rate", "ece", "brier", "rmse",
    "auroc_epistemic", "auroc_total",
    "fpr95_epistemic", "fpr95_total", "aurc", "augrc",
    "temperature", "nll_ts", "ece_ts",  # temperature scaling fitted on the validation split
]

SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("cell_id", pa.string()),
        ("variant", pa.string()),  # hash of the config without n, size, seed, method: equal = one curve
        ("attempt", pa.string()),
        ("task", pa.string()),
        ("model", pa.string()),
        ("size_knob", pa.string()),
        ("size", pa.int64()),
        ("params", pa.int64()),
        ("n", pa.int64()),
        ("n_unit", pa.string()),  # what N counts: "examples" or "tokens" (absent in old stores: examples)
        ("method", pa.string()),
        ("seed", pa.int64()),
        ("split", pa.string()),
        ("members", pa.int64()),  # grid.members: the first m members/samples evaluated; null = all S
        ("kind", pa.string()),  # "epoch" (training progress) or "final" (evaluation)
        ("epoch", pa.int64()),
        ("status", pa.string()),  # "ok", "failed" or "degenerate" (raysweep.quality; `error` says why)
        ("error", pa.string()),
        ("samples", pa.int64()),  # S: members or posterior samples per prediction (Method.samples)
        ("wall_time_s", pa.float64()),
        ("node", pa.string()),  # Ray node id of the worker that ran the cell
        *[(name, pa.float64()) for name in METRICS],
        # how the cell trained (raysweep.training.budget): the training phase's epochs, its last epoch's
        # loss, the validation loss of the weights kept, why it stopped, the budget, the examples fitted
        ("epochs_run", pa.int64()),
        ("train_loss", pa.float64()),
        ("val_loss", pa.float64()),
        ("stop_reason", pa.string()),  # "converged", "cap" or "fixed"
        ("budget", pa.string()),
        ("n_fit", pa.int64()),  # training examples after the validation split (N in the fixed mode)
        ("train_flops", pa.float64()),  # compute C: 6·P·units·examples seen·networks, as run (plan.training_flops)
        ("hess_init_weight", pa.float64()),  # IVON: share of its Hessian estimate still hess_init (Method.facts)
        ("scale_speed", pa.float64()),  # VI: how fast its guide scales still move at the end, 0-1 (Method.facts)
        ("eval_hash", pa.string()),  # content hash of the row's evaluation set (tasks.data.content_hash)
        ("config", pa.string()),  # the cell's full resolved config, JSON
        ("versions", pa.string()),  # package versions, JSON
    ]
)

TEMP_PREFIX = ".tmp-"
# A file without these is not a raysweep result; other columns may be absent (older versions).
REQUIRED_COLUMNS = {"cell_id", "attempt", "kind", "status"}


def results_dir(output: str | Path, experiment: str) -> Path:
    return Path(output) / experiment / "results"


# Cell keys that vary along a curve (or between curves of one plot); everything else must be equal.
CURVE_AXES = ("cell_id", "n", "size", "seed", "method")


def variant(cell: dict) -> str:
    """A short stable hash of what cells must share to be pooled on one curve: the config without
    its cell id, N, size, seed and method (and the model's size-knob field, which is the size).
    Method options stay in: two ensembles of different sizes are different curves."""
    rest = {k: v for k, v in cell.items() if k not in CURVE_AXES}
    if isinstance(rest.get("model"), dict) and cell.get("size_knob"):
        rest["model"] = {k: v for k, v in rest["model"].items() if k != cell["size_knob"]}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def write_cell(directory: str | Path, rows: list[dict]) -> Path:
    """Write one cell attempt's rows atomically; returns the final path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{name: row.get(name) for name in SCHEMA.names} for row in rows], schema=SCHEMA)
    final = directory / f"{rows[0]['cell_id']}.{rows[0]['attempt']}.parquet"
    # Hidden and not ending in .parquet: skipped by pyarrow/pandas (leading ".") and by the
    # "*.parquet" globs that DuckDB and `datasets` users write.
    temporary = directory / f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}.part"
    try:
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)  # atomic on POSIX: the file appears whole or not at all
    except OSError as exc:  # disk full, permission denied, ...: say where and why
        raise OSError(exc.errno, f"cannot write results to {directory}: {exc.strerror or exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)
    return final


def sweep_temporaries(directory: str | Path) -> int:
    """Remove temporary files a crash left behind; returns how many. Launch calls this only while
    it holds the store's lock; a temporary whose writer (the pid in its name) still runs on this
    machine is left alone all the same, in case a process writes without the lock."""
    leftovers = list(Path(directory).glob(f"{TEMP_PREFIX}*")) if Path(directory).is_dir() else []
    leftovers = [path for path in leftovers if not _writer_alive(path.name)]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


def _writer_alive(name: str) -> bool:
    pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def corrupt_dir(directory: str | Path) -> Path:
    return Path(directory).parent / "corrupt"


def _result_files(directory: Path) -> list[Path]:
    """The store's own result files: `*.parquet` directly in the folder. Anything else there (a
    notes.txt, a folder nested inside, a temporary) is not read."""
    return sorted(path for path in directory.glob("*.parquet") if path.is_file())


def _schema_problem(schema: pa.Schema) -> str | None:
    """Why a file's schema is not a raysweep result's, or None. Columns may be missing (older
    versions) but those present must have our type: a foreign file is never silently cast."""
    missing = REQUIRED_COLUMNS - set(schema.names)
    if missing:
        return f"it lacks the columns {sorted(missing)}"
    wrong = [f"{f.name} is {f.type}, expected {SCHEMA.field(f.name).type}" for f in schema
             if f.name in SCHEMA.names and f.type != SCHEMA.field(f.name).type and not pa.types.is_null(f.type)]
    return f"mistyped columns: {'; '.join(wrong)}" if wrong else None


def _quarantine(path: Path, problem: str) -> str | None:
    """Move one bad file to ../corrupt/; None when another reader moved it first."""
    target = corrupt_dir(path.parent) / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(path, target)
    except FileNotFoundError:  # a concurrent reader quarantined it already
        return None
    message = f"moved corrupt result file {path.name} to {target} ({problem})"
    print(f"[raysweep] {message}", file=sys.stderr)
    return message


def _read(path: Path) -> tuple[pa.Table | None, str | None]:
    """One result file conformed to SCHEMA, or (None, why it is unreadable). (None, None): it vanished."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        return None, None
    except (pa.ArrowException, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    problem = _schema_problem(table.schema)
    if problem:
        return None, problem
    columns = []
    for field in SCHEMA:
        if field.name in table.schema.names:
            columns.append(table.column(field.name).cast(field.type))  # only null -> type: types match
        elif field.name == "variant" and "config" in table.schema.names and table.num_rows:
            columns.append(pa.array([_variant_of_json(table.column("config")[0].as_py())] * table.num_rows,
                                    pa.string()))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=SCHEMA), None


def _variant_of_json(config: str | None) -> str | None:
    """Files written before the `variant` column: computed from their config."""
    try:
        return variant(json.loads(config)) if config else None
    except (ValueError, TypeError, AttributeError):
        return None


def quarantine_corrupt(directory: str | Path) -> list[str]:
    """Move unreadable, foreign or mistyped files aside (to ../corrupt/) so loading goes on without
    them; returns one message per file moved, also printed to stderr."""
    messages = []
    for path in _result_files(Path(directory)):
        _, problem = _read(path)
        if problem and (message := _quarantine(path, problem)):
            messages.append(message)
    return messages


def load(directory: str | Path, kind: str = "final") -> pa.Table:
    """Rows of one kind ("final" by default), de-duplicated: for each cell the latest attempt wins.

    Each file is checked as it is read, so a file that is corrupted, foreign or mistyped is moved
    aside (see quarantine_corrupt); a file another reader moves away meanwhile is skipped. The final
    rows come through a cache beside the results (`rows_cache_path`), so that the report of a
    100,000-cell store does not open 100,000 files: only files it does not know, or whose size or
    modification time changed, are read.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return SCHEMA.empty_table()
    table = _final_rows(directory) if kind == "final" else _rows_of_every_file(directory, kind)
    if table.num_rows == 0:
        return table.select(SCHEMA.names)
    latest = table.group_by("cell_id").aggregate([("attempt", "max")])
    keep = table.join(latest, keys=["cell_id", "attempt"], right_keys=["cell_id", "attempt_max"], join_type="inner")
    return keep.select(SCHEMA.names).sort_by([("cell_id", "ascending"), ("split", "ascending")])


def _rows_of_every_file(directory: Path, kind: str) -> pa.Table:
    tables = [table.filter(pc.field("kind") == kind) for table in map(_checked, _result_files(directory))
              if table is not None]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def _checked(path: Path) -> pa.Table | None:
    """One file's rows, or None when it is unreadable (then moved aside) or gone."""
    table, problem = _read(path)
    if problem:
        _quarantine(path, problem)
    return table


# The rows cache: every final row of the files it knows, with the file's name, size and mtime.
STAMP = pa.schema([("_file", pa.string()), ("_file_size", pa.int64()), ("_file_mtime_ns", pa.int64())])
ROWS_CACHE_SCHEMA = pa.schema([*STAMP, *SCHEMA])


def rows_cache_path(directory: str | Path) -> Path:
    """Beside the results folder, hidden, like the resume index: globs over results/*.parquet never see it."""
    directory = Path(directory)
    return directory.parent / f".{directory.name}-final-rows.parquet"


def _final_rows(directory: Path) -> pa.Table:
    """The final rows of every result file: the cache's, for files unchanged since it was written, and
    read from the file for the rest; the cache is rewritten when anything changed. A file without
    final rows leaves nothing in the cache and is read again next time (a cell cut off mid-write)."""
    stamps = {path.name: _stamp(path) for path in _result_files(directory)}
    stamps = {name: stamp for name, stamp in stamps.items() if stamp is not None}
    cached = _read_rows_cache(directory)
    files, sizes, mtimes = (cached.column(name).to_pylist() for name in STAMP.names)
    known = {name: (size, mtime_ns) for name, size, mtime_ns in zip(files, sizes, mtimes)}
    fresh = [name for name, stamp in known.items() if stamps.get(name) == stamp]
    kept = cached.filter(pc.is_in(cached.column("_file"), pa.array(fresh, pa.string())))
    new = []
    for name in sorted(stamps.keys() - set(fresh)):
        table = _checked(directory / name)
        if table is not None and (final := table.filter(pc.field("kind") == "final")).num_rows:
            size, mtime_ns = stamps[name]
            new.append(pa.Table.from_arrays(
                [pa.array([name] * final.num_rows, pa.string()), pa.array([size] * final.num_rows, pa.int64()),
                 pa.array([mtime_ns] * final.num_rows, pa.int64()), *final.columns], schema=ROWS_CACHE_SCHEMA))
    rows = pa.concat_tables([kept, *new])
    if new or kept.num_rows != cached.num_rows:
        _write_atomically(rows, rows_cache_path(directory))
    return rows


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _read_rows_cache(directory: Path) -> pa.Table:
    try:
        table = pq.read_table(rows_cache_path(directory))
    except (FileNotFoundError, pa.ArrowException, OSError):
        return ROWS_CACHE_SCHEMA.empty_table()  # none yet, or unreadable: rebuilt from the files
    return table if table.schema.equals(ROWS_CACHE_SCHEMA) else ROWS_CACHE_SCHEMA.empty_table()  # older version


# Statuses of a cell that is done: the next launch does not run it again.
DONE = ("ok", "degenerate")  # a degenerate cell finished: rerunning it would give the same cell
INDEX_COLUMNS = ("cell_id", "attempt", "status")


def finished_cells(directory: str | Path) -> set[str]:
    """Cell ids whose latest finished attempt has a DONE status.

    Resume at 100,000 cells must not read 100,000 files: a small index beside the results
    (`index_path`) holds each result file's (cell id, attempt, final status). Only files the index
    does not know are opened (their four columns, not their rows of metrics), and the index is
    rewritten with them. It is a cache, checked against the folder's listing every time: entries of
    files that are gone are dropped, a lost or unreadable index is rebuilt from the files."""
    directory = Path(directory)
    if not directory.is_dir():
        return set()
    names = {path.name for path in _result_files(directory)}
    index = {name: entry for name, entry in _read_index(directory).items() if name in names}
    unknown = sorted(names - index.keys())
    for name in unknown:
        entry = _index_entry(directory / name)
        if entry is not None:
            index[name] = entry
    if unknown or len(index) != len(names):
        _write_index(directory, index)
    latest: dict[str, tuple[str, str]] = {}  # cell id -> (attempt, status) of its latest final attempt
    for cell_id, attempt, status in index.values():
        if status is not None and (cell_id not in latest or attempt > latest[cell_id][0]):
            latest[cell_id] = (attempt, status)
    return {cell_id for cell_id, (_, status) in latest.items() if status in DONE}


def index_path(directory: str | Path) -> Path:
    """Beside the results folder, hidden: globs over results/*.parquet never see it."""
    directory = Path(directory)
    return directory.parent / f".{directory.name}-index.parquet"


def _index_entry(path: Path) -> tuple[str, str, str | None] | None:
    """(cell id, attempt, status of its final rows or None) of one result file; None if the file
    is unreadable (then moved aside) or gone."""
    try:
        with pq.ParquetFile(path) as parquet:  # one open: the footer gives the schema, then four columns
            problem = _schema_problem(parquet.schema_arrow)
            table = None if problem else parquet.read(columns=["cell_id", "attempt", "kind", "status"])
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as exc:
        table, problem = None, f"{type(exc).__name__}: {exc}"
    if table is None:
        _quarantine(path, problem)
        return None
    if table.num_rows == 0:
        return None
    final = table.filter(pc.field("kind") == "final")
    status = final.column("status")[0].as_py() if final.num_rows else None
    return table.column("cell_id")[0].as_py(), table.column("attempt")[0].as_py(), status


def _read_index(directory: Path) -> dict[str, tuple]:
    try:
        table = pq.read_table(index_path(directory))
        return dict(zip(table.column("file").to_pylist(),
                        zip(*(table.column(name).to_pylist() for name in INDEX_COLUMNS))))
    except (FileNotFoundError, pa.ArrowException, OSError, KeyError):
        return {}  # no index yet, or one that cannot be read: rebuilt from the files


def _write_index(directory: Path, index: dict[str, tuple]) -> None:
    names = sorted(index)
    columns = {"file": names} | {column: [index[name][i] for name in names] for i, column in enumerate(INDEX_COLUMNS)}
    table = pa.table(columns, schema=pa.schema([(name, pa.string()) for name in columns]))
    _write_atomically(table, index_path(directory))


def _write_atomically(table: pa.Table, target: Path) -> None:
    """A cache beside the results, written like result files: a concurrent reader sees the old one or
    the new one. A cache that cannot be written is no error: a read-only store still resumes and
    reports, reading the files."""
    temporary = target.with_name(f"{target.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, target)
    except OSError:
        pass
    finally:
        temporary.unlink(missing_ok=True)


def check_writable(directory: str | Path) -> None:
    """Fail early, with the folder and the reason, if results cannot be written there."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{TEMP_PREFIX}{os.getpid()}-probe-{uuid.uuid4().hex}.part"
        probe.write_bytes(b"raysweep write check")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write results to {directory}: {exc.strerror or exc}") from exc


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("raysweep", "torch", "ray", "numpy", "pyarrow", "lmfit", "pyro-ppl", "deepspeed", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return json.dumps(found, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# One store, one writer, one configuration

LOCK_NAME = ".lock"  # in OUTPUT/<experiment>/; flock is advisory and per machine (not across NFS clients)
MANIFEST_NAME = "store.json"


class StoreBusy(RuntimeError):
    """Another launch holds the store's lock."""


class StoreMismatch(ValueError):
    """The launch's configuration differs from the one the store was made with."""


@contextlib.contextmanager
def locked(root: str | Path, wait_s: float = 0.0):
    """Hold OUTPUT/<experiment>/.lock for the whole launch: a second launch into the same store
    waits up to wait_s seconds, then refuses, instead of running every cell a second time."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / LOCK_NAME, "a+")
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise StoreBusy(f"another launch (pid {holder}) is writing to {root}; wait for it to "
                                    f"finish (--wait-for-lock SECONDS) or use another --output") from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}@{os.uname().nodename}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def flatten(value, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out |= flatten(item, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): value}


def identity_differences(stored: dict, current: dict) -> list[str]:
    """Keys whose values differ. A key present on one side only (a method added to the grid, a
    field a newer raysweep added) is an extension, not a difference."""
    a, b = flatten(stored), flatten(current)
    return [f"{key}: {a[key]!r} in the store, {b[key]!r} now"
            for key in sorted(a.keys() & b.keys()) if a[key] != b[key]]


def check_identity(root: str | Path, identity: dict, merge: bool = False) -> str | None:
    """Refuse (StoreMismatch) a launch whose configuration differs from the store's, unless merge:
    then the new configuration is recorded as one more variant. Returns a note to print, or None."""
    path = Path(root) / MANIFEST_NAME
    identity = json.loads(json.dumps(identity, default=str))  # tuples -> lists, as stored
    if not path.exists():
        _write_json(path, {"identity": identity, "merged": []})
        return None
    manifest = json.loads(path.read_text())
    if identity == manifest["identity"] or identity in manifest.get("merged", []):
        return None
    differences = identity_differences(manifest["identity"], identity)
    if not differences:  # only extensions: the same configuration
        return None
    if not merge:
        raise StoreMismatch(
            f"the store {root} was made with another configuration ({'; '.join(differences)}). Its cells would "
            f"be pooled with this launch's. Use --new-store to set the old store aside and start a fresh one, "
            f"--merge to keep both in this store (the `variant` column tells them apart), or another name "
            f"(--set name=...)")
    manifest.setdefault("merged", []).append(identity)
    _write_json(path, manifest)
    return f"merged a new configuration into {root} ({'; '.join(differences)})"


def set_aside(root: str | Path) -> Path | None:
    """--new-store: move everything of OUTPUT/<experiment>/ but the lock to a dated sibling folder."""
    root = Path(root)
    entries = [p for p in root.iterdir() if p.name != LOCK_NAME] if root.is_dir() else []
    if not entries:
        return None
    target = root.parent / f"{root.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    while target.exists():
        target = target.with_name(target.name + "x")
    target.mkdir()
    for entry in entries:
        os.replace(entry, target / entry.name)
    return target


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}.part")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(temporary, path)
