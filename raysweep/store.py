"""The results store: a Parquet dataset under DIR/<experiment>/results/, one file per cell attempt.

Files are written by the driver (see raysweep.trial.StoreCallback), so clusters need no shared
storage. Each file is written under a hidden temporary name and atomically renamed: a reader never
sees a partial file.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

METRICS = [
    "loss",
    "total", "aleatoric", "epistemic",
    "total_std", "aleatoric_std", "epistemic_std",
    "total_var", "aleatoric_var", "epistemic_var",
    "nll", "accuracy", "error_rate", "ece", "brier", "rmse",
    "auroc_epistemic", "auroc_total",
]

SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("cell_id", pa.string()),
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
        ("kind", pa.string()),  # "epoch" (training progress) or "final" (evaluation)
        ("epoch", pa.int64()),
        ("status", pa.string()),  # "ok" or "failed"
        ("error", pa.string()),
        ("wall_time_s", pa.float64()),
        ("node", pa.string()),  # Ray node id of the worker that ran the cell
        *[(name, pa.float64()) for name in METRICS],
        ("config", pa.string()),  # the cell's full resolved config, JSON
        ("versions", pa.string()),  # package versions, JSON
    ]
)

TEMP_PREFIX = ".tmp-"
# A file without these is not a raysweep result; other columns may be absent (older versions).
REQUIRED_COLUMNS = {"cell_id", "attempt", "kind", "status"}


def results_dir(output: str | Path, experiment: str) -> Path:
    return Path(output) / experiment / "results"


def write_cell(directory: str | Path, rows: list[dict]) -> Path:
    """Write one cell attempt's rows atomically; returns the final path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{name: row.get(name) for name in SCHEMA.names} for row in rows], schema=SCHEMA)
    final = directory / f"{rows[0]['cell_id']}.{rows[0]['attempt']}.parquet"
    # Hidden and not ending in .parquet: skipped by pyarrow/pandas (leading ".") and by the
    # "*.parquet" globs that DuckDB and `datasets` users write.
    temporary = directory / f"{TEMP_PREFIX}{uuid.uuid4().hex}.part"
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
    """Remove temporary files a crash left behind; returns how many."""
    leftovers = list(Path(directory).glob(f"{TEMP_PREFIX}*")) if Path(directory).is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


def corrupt_dir(directory: str | Path) -> Path:
    return Path(directory).parent / "corrupt"


def quarantine_corrupt(directory: str | Path) -> list[str]:
    """Move unreadable or foreign-schema files aside (to ../corrupt/) so loading goes on without
    them; returns one message per file moved, also printed to stderr."""
    messages = []
    for path in sorted(Path(directory).glob("*.parquet")):
        try:
            missing = REQUIRED_COLUMNS - set(pq.read_schema(path).names)
            problem = f"it lacks the columns {sorted(missing)}" if missing else None
        except (pa.ArrowException, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            target = corrupt_dir(directory) / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            messages.append(f"moved corrupt result file {path.name} to {target} ({problem})")
    for message in messages:
        print(f"[raysweep] {message}", file=sys.stderr)
    return messages


def load(directory: str | Path, kind: str = "final") -> pa.Table:
    """Rows of one kind ("final" by default), de-duplicated: for each cell the latest attempt wins.

    Corrupt files are moved aside first (see quarantine_corrupt), so one bad file never hides the rest.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return SCHEMA.empty_table()
    quarantine_corrupt(directory)
    if not any(directory.glob("*.parquet")):
        return SCHEMA.empty_table()
    table = ds.dataset(directory, format="parquet", schema=SCHEMA).to_table(filter=pc.field("kind") == kind)
    if table.num_rows == 0:
        return table
    latest = table.group_by("cell_id").aggregate([("attempt", "max")])
    keep = table.join(latest, keys=["cell_id", "attempt"], right_keys=["cell_id", "attempt_max"], join_type="inner")
    return keep.select(SCHEMA.names).sort_by([("cell_id", "ascending"), ("split", "ascending")])


def finished_cells(directory: str | Path) -> set[str]:
    """Cell ids whose latest attempt finished successfully."""
    table = load(directory)
    ok = table.filter(pc.field("status") == "ok")
    return set(ok.column("cell_id").to_pylist())


def check_writable(directory: str | Path) -> None:
    """Fail early, with the folder and the reason, if results cannot be written there."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}.part"
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
