"""Sweeps on a multi-node Ray cluster (ray.cluster_utils.Cluster: several raylets on this machine)."""

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from raysweep import store
from raysweep.launch import main, start_local_ray

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    # The head runs only the driver (no CPUs for cells), so cells must go to the two worker nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def regression_args(root, output, address, *extra):
    return [str(root / "experiments" / "regression.py"), "--output", str(output), "--address", address,
            "--set", "grid.methods=exact", "--set", "grid.seeds=0,1", *extra]


def test_a_sweep_spreads_over_the_nodes_and_completes_the_store(root, tmp_path, cluster):
    # Cells of a second or two each: long enough that both worker nodes get some.
    args = [str(root / "experiments" / "digits.py"), "--output", str(tmp_path / "runs"), "--address",
            cluster.address, "--storage", str(tmp_path / "shared"), "--smoke", "--set", "grid.methods=ensemble",
            "--set", "grid.seeds=0,1,2", "--set", "train.until=fixed", "--set", "train.epochs=400"]
    assert main(args) == 0
    table = store.load(store.results_dir(tmp_path / "runs", "digits"))
    assert table.column("cell_id").unique().to_pylist().__len__() == 6  # 2 N x 3 seeds
    assert set(table.column("status").to_pylist()) <= set(store.DONE)
    assert len(set(table.column("node").to_pylist())) == 2  # cells ran on both worker nodes


def test_node_local_storage_on_a_multi_node_cluster_is_refused(root, tmp_path, cluster, capsys, monkeypatch):
    monkeypatch.delenv("RAYSWEEP_STORAGE", raising=False)
    assert main(regression_args(root, tmp_path / "runs", cluster.address)) == 2
    assert "has 3 nodes, but Tune's run storage would be" in capsys.readouterr().err
    assert not list(store.results_dir(tmp_path / "runs", "regression").glob("*.parquet"))


def test_the_local_dashboard_listens_on_loopback_only():
    context = start_local_ray(dashboard=True)
    try:
        port = int(context.dashboard_url.rsplit(":", 1)[1])
        listening = [c.laddr.ip for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        assert listening and set(listening) == {"127.0.0.1"}
    finally:
        ray.shutdown()


def test_cells_of_a_removed_node_are_rescheduled_within_their_retry_bound(root, tmp_path, cluster, capsys):
    import threading
    import time

    output = tmp_path / "runs"
    args = [str(root / "experiments" / "digits.py"), "--output", str(output), "--address", cluster.address,
            "--storage", str(tmp_path / "shared"), "--smoke", "--set", "grid.methods=ensemble",
            "--set", "grid.seeds=0,1,2", "--set", "train.epochs=800", "--set", "resources.max_retries=2"]
    outcome = {}
    sweep = threading.Thread(target=lambda: outcome.setdefault("code", main(args)))
    sweep.start()
    results = store.results_dir(output, "digits")
    deadline = time.time() + 240
    while not list(results.glob("*.parquet")) and time.time() < deadline:
        time.sleep(0.2)
    cluster.remove_node(cluster.list_all_nodes()[-1])  # a worker node disappears mid-sweep
    sweep.join(timeout=600)
    assert outcome.get("code") == 0
    table = store.load(results)
    failed = [error for status, error in zip(table.column("status").to_pylist(), table.column("error").to_pylist())
              if status == "failed"]
    if failed:
        # A Ray Tune race, seen once in ~10 runs: the dead actor had two calls in flight, the first
        # failure puts the trial back to PENDING for its retry and the second then errors it
        # (tune_controller._process_trial_failure). The cell is recorded as failed, not lost, and
        # running the same launch again runs it, as for any failed cell.
        assert all("the trial failed without an error message" in error or "died" in error for error in failed), failed
        assert main(args) == 0
        table = store.load(results)
    assert table.column("cell_id").unique().to_pylist().__len__() == 6
    assert set(table.column("status").to_pylist()) <= set(store.DONE)
    retries = [line for line in capsys.readouterr().out.splitlines() if "retrying" in line]
    labels = [line.split("retrying ")[1].split(" ")[0] for line in retries]
    assert all(labels.count(label) <= 2 for label in labels)  # no cell beyond its retry bound
