"""The Ray edge: the Tune trainable for one cell and the driver-side callback that writes the store."""

from __future__ import annotations

import json
import time

import ray
import torch
from ray import tune

from raysweep import store
from raysweep.cell import run_cell
from raysweep.experiment import cell_label


def trainable(config: dict) -> None:
    """One Tune trial = one cell. Threads follow the CPUs Ray granted; rows go back via tune.report."""
    cell = config["cell"]
    torch.set_num_threads(max(1, int(config["cpus"])))
    device = "cuda" if config.get("gpus", 0) > 0 and torch.cuda.is_available() else "cpu"
    node = ray.get_runtime_context().get_node_id()  # recorded so a result can be traced to its machine

    def report(rows: list[dict]) -> None:
        tune.report({"rows": [row | {"node": node} for row in rows]})

    run_cell(cell, report, device=device)


class StoreCallback(tune.Callback):
    """Collects each trial's rows on the driver and writes them as one Parquet file per attempt
    when the trial ends; prints one progress line per finished cell."""

    def __init__(self, directory, total: int, already_done: int = 0):
        self.directory = directory
        self.total, self.done, self.failed = total, already_done, 0
        self.rows: dict[str, list[dict]] = {}
        self.started = time.time()
        self.versions = store.versions()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.rows.setdefault(trial.trial_id, []).extend(result.get("rows", []))

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"[raysweep] retrying {cell_label(trial.config['cell'])} after: {_last_line(trial.get_error())}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        rows = self._latest_attempt(trial)
        failed = any(row["status"] == "failed" for row in rows)
        self._write(trial, rows, failed, rows[-1].get("error") if failed else None)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial.get_error() or "the trial failed without an error message"
        rows = self._latest_attempt(trial)
        attempt = rows[0]["attempt"] if rows else f"{time.time_ns():020d}-error"
        rows.append({"cell_id": trial.config["cell"]["cell_id"], "attempt": attempt, "kind": "final",
                     "status": "failed", "error": error})
        self._write(trial, rows, True, _last_line(error))

    def _latest_attempt(self, trial) -> list[dict]:
        """A retried trial replays its epochs: keep only the rows of its latest attempt."""
        rows = self.rows.pop(trial.trial_id, [])
        latest = max((row["attempt"] for row in rows), default=None)
        return [row for row in rows if row["attempt"] == latest]

    def _write(self, trial, rows: list[dict], failed: bool, reason: str | None) -> None:
        cell = trial.config["cell"]
        coordinates = {
            "experiment": cell["experiment"], "task": cell["task"]["name"],
            "model": cell["model"]["name"] if cell["model"] else None, "size_knob": cell["size_knob"],
            "size": cell["size"], "n": cell["n"], "method": cell["method"], "seed": cell["seed"],
            "config": json.dumps(cell, sort_keys=True), "versions": self.versions,
        }
        store.write_cell(self.directory, [coordinates | row for row in rows])
        self.done += 1
        self.failed += failed
        status = f"FAILED: {reason}" if failed else "ok"
        print(f"[raysweep] {self.done}/{self.total} cells ({self.failed} failed, "
              f"{time.time() - self.started:.0f}s) {cell_label(cell)}: {status}", flush=True)


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
