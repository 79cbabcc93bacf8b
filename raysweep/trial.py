"""The Ray edge: the Tune trainable for a chunk of cells and the driver-side callback that writes the store.

One Tune trial runs a chunk of one or more cells (see raysweep.launch): small cells then share one
trial's scheduling cost. Each cell still gets its own Parquet file, its own progress line and its own
status; a retried trial skips the cells already written (`config["skip"]`).

A trial's config holds its chunk's index and labels only (`chunk_config`), not the cells: Tune keeps
every trial's config in its experiment state (three copies, rewritten as the sweep runs), where the
cells' own configs cost 7 KB a cell. The cells travel once through Ray's object store, one object per
chunk (`trainable`'s `chunk_refs`), and the driver's callback holds the same list (`StoreCallback`).
"""

from __future__ import annotations

import json
import time

import ray
import torch
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from raysweep import ray_train, store
from raysweep.cell import run_chunk
from raysweep.experiment import cell_label

# Each tune.report stops the worker until the driver has processed the result, so rows go out at
# most once a second (and at the end of the chunk), not once per epoch or per sub-second cell. A
# worker that dies loses at most that second's rows: those cells are not in the store and rerun.
FLUSH_EVERY_S = 1.0


class CellsFailed(RuntimeError):
    """Raised at the end of a chunk in which some cells raised, so that Tune retries the trial
    (its retry runs only the cells not yet written)."""


def chunk_config(index: int, cells: list[dict]) -> dict:
    """What a trial's config says of its chunk: where to find the cells, and the names Tune shows."""
    more = f"+{len(cells) - 1}" if len(cells) > 1 else ""
    return {"index": index, "label": chunk_label(cells), "dirname": f"{cell_label(cells[0])}{more}"}


def trainable(config: dict, chunk_refs: list) -> None:
    """One Tune trial = a chunk of cells (chunk_refs: one object ref per chunk, given through
    tune.with_parameters). Threads follow the CPUs Ray granted; rows go back via tune.report."""
    cells = ray.get(chunk_refs[config["chunk"]["index"]])
    if ray_train.uses_workers(cells[0]):  # a chunk of its own: this trial drives a Train run
        cell = cells[0]
        if cell["cell_id"] not in config.get("skip", ()):
            ray_train.run_cell_on_workers(cell, config["cpus"], config["gpus"])
        return
    torch.set_num_threads(max(1, int(config["cpus"])))
    device = "cuda" if config.get("gpus", 0) > 0 and torch.cuda.is_available() else "cpu"
    # The node id is recorded so that a result can be traced to its machine.
    outbox = Outbox(node=ray.get_runtime_context().get_node_id())
    errors = run_chunk(cells, outbox.add, device=device, skip=set(config.get("skip", ())))
    outbox.flush(errors)
    if errors:
        labels = {cell["cell_id"]: cell_label(cell) for cell in cells}
        raise CellsFailed("; ".join(f"{labels[cell_id]}: {_last_line(error)}" for cell_id, error in errors.items()))


class Outbox:
    """Rows on their way to the driver, sent at most every FLUSH_EVERY_S seconds."""

    def __init__(self, node: str):
        self.node = node
        self.pending: list[dict] = []
        self.last_flush = time.monotonic()

    def add(self, rows: list[dict]) -> None:
        self.pending.extend(row | {"node": self.node} for row in rows)
        if time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
            self.flush()

    def flush(self, errors: dict[str, str] | None = None) -> None:
        if self.pending or errors:
            tune.report({"rows": self.pending} | ({"errors": errors} if errors else {}))
        self.pending, self.last_flush = [], time.monotonic()


class StoreCallback(tune.Callback):
    """Collects rows on the driver and writes each cell as one Parquet file as soon as its final
    rows arrive; prints one progress line per cell. A cell that fails inside a chunk is recorded
    as failed once its trial has no retries left; its siblings keep their own results."""

    def __init__(self, directory, chunks: list[list[dict]], total: int, already_done: int = 0):
        self.directory, self.chunks = directory, chunks  # chunks[i]: the cells of trials with chunk index i
        self.total, self.done, self.failed = total, already_done, 0
        self.rows: dict[tuple[str, str], list[dict]] = {}  # (trial id, cell id) -> rows received
        self.errors: dict[tuple[str, str], str] = {}  # (trial id, cell id) -> traceback of its last attempt
        self.written: dict[str, set[str]] = {}  # trial id -> cell ids in the store
        self.write_errors: list[tuple[str, str]] = []  # (cell label, why its rows could not be written)
        self.started = time.time()
        self.versions = store.versions()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        finished = []
        for row in result.get("rows", []):
            self.rows.setdefault((trial.trial_id, row["cell_id"]), []).append(row)
            if row["kind"] == "final" and row["cell_id"] not in finished:
                finished.append(row["cell_id"])
        # Tune keeps each trial's last result in its saved experiment state: the rows, now in hand, need
        # not be kept there too (callbacks may change the result in place, says Tune's controller).
        result.pop("rows", None)
        for cell_id, error in result.get("errors", {}).items():
            self.errors[(trial.trial_id, cell_id)] = error
        cells = {cell["cell_id"]: cell for cell in self._cells(trial)}
        for cell_id in finished:
            rows = self._latest_attempt(trial, cell_id)
            failed = any(row["status"] == "failed" for row in rows)
            self._write(trial, cells[cell_id], rows, failed, rows[-1].get("error") if failed else None)

    def on_trial_recover(self, iteration, trials, trial, **info):
        pending = self._unwritten(trial)
        raised = [cell for cell in pending if (trial.trial_id, cell["cell_id"]) in self.errors]
        for cell in raised:
            print(f"[raysweep] retrying {cell_label(cell)} after: "
                  f"{_last_line(self.errors[(trial.trial_id, cell['cell_id'])])}", flush=True)
        # The others were running or waiting when the worker died (or their last rows were lost with it).
        lost = [cell for cell in pending if (trial.trial_id, cell["cell_id"]) not in self.errors]
        if lost:
            more = f" and {len(lost) - 1} more cell(s) of its trial" if len(lost) > 1 else ""
            print(f"[raysweep] retrying {cell_label(lost[0])}{more} after: {_last_line(trial.get_error())}", flush=True)
        # The retry starts from trial.config: tell it which cells are already in the store.
        trial.set_config(trial.config | {"skip": sorted(self.written.get(trial.trial_id, ()))})

    def on_trial_complete(self, iteration, trials, trial, **info):
        for cell in self._unwritten(trial):  # a trainable that returns early must not lose a cell silently
            self._write_failed(trial, cell, "the trial ended without reporting this cell's results")

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial.get_error() or "the trial failed without an error message"
        for cell in self._unwritten(trial):
            self._write_failed(trial, cell, self.errors.get((trial.trial_id, cell["cell_id"]), error))

    def _cells(self, trial) -> list[dict]:
        return self.chunks[trial.config["chunk"]["index"]]

    def _unwritten(self, trial) -> list[dict]:
        written = self.written.get(trial.trial_id, set())
        return [cell for cell in self._cells(trial) if cell["cell_id"] not in written]

    def _latest_attempt(self, trial, cell_id: str) -> list[dict]:
        """A retried cell replays its epochs: keep only the rows of its latest attempt."""
        rows = self.rows.pop((trial.trial_id, cell_id), [])
        latest = max((row["attempt"] for row in rows), default=None)
        return [row for row in rows if row["attempt"] == latest]

    def _write_failed(self, trial, cell: dict, error: str) -> None:
        rows = self._latest_attempt(trial, cell["cell_id"])
        attempt = rows[0]["attempt"] if rows else f"{time.time_ns():020d}-error"
        rows.append({"cell_id": cell["cell_id"], "attempt": attempt, "kind": "final", "status": "failed",
                     "error": error})
        self._write(trial, cell, rows, True, _last_line(error))

    def _write(self, trial, cell: dict, rows: list[dict], failed: bool, reason: str | None) -> None:
        coordinates = {
            "experiment": cell["experiment"], "task": cell["task"]["name"],
            "model": cell["model"]["name"] if cell["model"] else None, "size_knob": cell["size_knob"],
            "size": cell["size"], "n": cell["n"], "method": cell["method"], "seed": cell["seed"],
            "variant": store.variant(cell), "config": json.dumps(cell, sort_keys=True), "versions": self.versions,
        }
        try:
            store.write_cell(self.directory, [coordinates | row for row in rows])
        except Exception as exc:  # noqa: BLE001 -- one cell's write error is that cell's failure, never the sweep's
            failed, reason = True, self._write_error(cell, rows, exc)
        self.written.setdefault(trial.trial_id, set()).add(cell["cell_id"])
        self.errors.pop((trial.trial_id, cell["cell_id"]), None)
        self.done += 1
        self.failed += failed
        degenerate = next((row.get("error") for row in rows if row.get("status") == "degenerate"), None)
        status = (f"FAILED: {reason}" if failed
                  else f"degenerate, kept out of the fits: {degenerate}" if degenerate else "ok")
        print(f"[raysweep] {self.done}/{self.total} cells ({self.failed} failed, "
              f"{time.time() - self.started:.0f}s) {cell_label(cell)}: {status}", flush=True)

    def _write_error(self, cell: dict, rows: list[dict], exc: Exception) -> str:
        """Record a cell whose rows could not be written (a value the schema cannot hold, a full
        disk) as failed with the reason, so the report lists it and the next launch reruns it. If
        even that row cannot be written, the cell is simply absent from the store: it reruns too."""
        reason = f"its results could not be written: {type(exc).__name__}: {exc}"
        attempt = rows[0]["attempt"] if rows else f"{time.time_ns():020d}-error"
        try:
            store.write_cell(self.directory, [{"experiment": str(cell.get("experiment")), "cell_id": cell["cell_id"],
                                               "attempt": attempt, "kind": "final", "status": "failed",
                                               "error": reason}])
        except Exception as again:  # noqa: BLE001
            reason += f" (nor its failure: {type(again).__name__}: {again}; it runs again on the next launch)"
        self.write_errors.append((cell_label(cell), reason))
        return reason

    @property
    def unfinished(self) -> int:
        """Cells of this launch that have no outcome yet (written or failed)."""
        return self.total - self.done


class RowlessJsonLogger(JsonLoggerCallback):
    """Tune's JSON logger without the rows and the config: Tuner.fit's result grid reads each trial's
    result.json (and warns for every trial without one), but the rows belong in the store alone, and
    the chunk's config is in the trial's params.json already. Logged whole, result.json held every
    row a second time (34 MB beside 48 MB of results for 3,000 cells) and the config once per report."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        kept = {key: value for key, value in result.items() if key not in ("rows", "config")}
        super().on_trial_result(iteration, trials, trial, kept, **info)


def chunk_label(cells: list[dict]) -> str:
    """A trial's name: its cell's label, or for several cells the values of each coordinate they
    take (in braces when more than one) and how many cells there are."""
    if len(cells) == 1:
        return cell_label(cells[0])

    def values(key, of=lambda cell, key: cell[key]):
        found = sorted({of(cell, key) for cell in cells if of(cell, key) is not None}, key=lambda v: (str(type(v)), v))
        return found[0] if len(found) == 1 else "{" + ",".join(map(str, found)) + "}"

    sized = [cell for cell in cells if cell["size"] is not None]
    size = f"_{sized[0]['size_knob']}{values('size')}" if sized else ""
    task = values("task", of=lambda cell, key: cell[key]["name"])
    return f"{task}_N{values('n')}{size}_{values('method')}_s{values('seed')} ({len(cells)} cells)"


def trial_name(trial) -> str:
    return trial.config["chunk"]["label"]


def trial_dirname(trial) -> str:
    return f"{trial.config['chunk']['dirname']}_{trial.trial_id}"


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
