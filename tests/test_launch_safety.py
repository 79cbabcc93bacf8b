"""Issue 16: launch refuses what cannot work, with the numbers, and exits non-zero when it did not finish."""

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from raysweep import experiment as E
from raysweep import launch, store
from raysweep.launch import LaunchError, main


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # importing ray would fail: proves it is never reached


def digits_args(root, output, *extra):
    return [str(root / "experiments" / "digits.py"), "--output", str(output), "--smoke", "--no-dashboard", *extra]


def test_a_launch_with_another_config_than_the_store_is_refused_naming_the_keys(root, tmp_path, capsys, no_ray):
    first = E.smoke(E.load(root / "experiments" / "digits.py"))
    store.check_identity(tmp_path / "digits", launch.store_identity(first))
    assert main(digits_args(root, tmp_path, "--set", "train.lr=0.5")) == 2
    err = capsys.readouterr().err
    assert "made with another configuration (train.lr: 0.002 in the store, 0.5 now)" in err and "--new-store" in err


def test_growing_the_grid_or_changing_resources_is_the_same_store(root):
    e = E.load(root / "experiments" / "digits.py")
    grown = E.apply_overrides(e, ["grid.seeds=0,1,2,3", "grid.n=50,100", "resources.cpus=2", "grid.methods=ensemble"])
    assert not store.identity_differences(launch.store_identity(e), launch.store_identity(grown))
    changed = E.apply_overrides(e, ["methods.ensemble.members=3"])
    assert store.identity_differences(launch.store_identity(e), launch.store_identity(changed)) == [
        "methods.ensemble.members: 5 in the store, 3 now"]


def test_a_second_launch_into_a_busy_store_is_refused(root, tmp_path, capsys, no_ray):
    with store.locked(tmp_path / "digits"):
        assert main(digits_args(root, tmp_path, "--wait-for-lock", "0.3")) == 2
    assert f"another launch (pid {os.getpid()}@" in capsys.readouterr().err


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", r"--address '127.0.0.1:1': cannot reach Ray's GCS at [0-9.]+:1 within 2s"),
    ("127.0.0.1:notaport", r"--address '127.0.0.1:notaport'"),
])
def test_an_unreachable_address_fails_fast_in_one_line(address, message):
    started = time.monotonic()
    with pytest.raises(LaunchError, match=message):
        launch.connect(address, timeout_s=2)
    assert time.monotonic() - started < 10


def test_bad_launch_flags_are_refused():
    for flags in (["--connect-timeout", "nan"], ["--connect-timeout", "0"], ["--wait-for-lock", "-1"],
                  ["--new-store", "--merge"]):
        with pytest.raises(SystemExit):
            launch.parse_args(["x.py", *flags])


@pytest.mark.parametrize("cpus, gpus, node, message", [
    (1, 1, {"CPU": 2}, r"resources.cpus=1 and resources.gpus=1 on one node, but the nodes have 2 CPU and 0 GPU"),
    (64, 0, {"CPU": 2}, r"resources.cpus=64 and resources.gpus=0 on one node, but the nodes have 2 CPU"),
    (1, 0, {"CPU": 2}, None),
    (2, 1, {"CPU": 8, "GPU": 1}, None),
])
def test_trials_that_fit_no_node_are_refused_with_the_numbers(cpus, gpus, node, message):
    problem = launch.unplaceable_trial(cpus, gpus, [{"Alive": True, "Resources": node}])
    if message is None:
        assert problem is None
    else:
        assert problem and __import__("re").search(message, problem)


def test_fractional_cpus_are_capped_at_one_trial_per_cpu_with_a_warning(capsys):
    assert launch.fractional_cpu_cap(0.1, 2) == 2
    assert "resources.cpus=0.1 would let Ray start 20 trial processes on 2 CPUs" in capsys.readouterr().err
    assert launch.fractional_cpu_cap(1, 2) is None


def test_auth_off_is_warned_and_the_token_file_made_private(tmp_path, capsys):
    assert launch.warn_if_auth_off({"RAY_AUTH_MODE": "disabled"})
    assert "RAY_AUTH_MODE=disabled turns Ray's token authentication off" in capsys.readouterr().err
    assert not launch.warn_if_auth_off({"RAY_AUTH_MODE": "token"}) and not launch.warn_if_auth_off({})
    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)
    launch.restrict_token_file(token)
    assert token.stat().st_mode & 0o777 == 0o600


def test_a_sweep_with_cells_left_is_interrupted_not_finished():
    launch.check_complete(SimpleNamespace(total=4, done=4, failed=1, unfinished=0))
    with pytest.raises(launch.Interrupted, match=r"2 of 4 cells have an outcome \(0 failed\), 2 did not finish"):
        launch.check_complete(SimpleNamespace(total=4, done=2, failed=0, unfinished=2))


# ---------------------------------------------------------------------------------------------
# With Ray (slow): one local Ray each

@pytest.mark.slow
def test_a_trial_that_fits_no_node_is_refused_before_it_hangs(root, tmp_path, capsys):
    assert main(digits_args(root, tmp_path, "--set", "resources.gpus=1")) == 2
    assert "resources.gpus=1 on one node, but the nodes have" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_exits_130_says_what_finished_and_writes_no_report(root, tmp_path):
    command = [sys.executable, "-m", "raysweep.launch", *digits_args(root, tmp_path, "--set", "grid.methods=ensemble",
                                                                     "--set", "train.until=fixed",
                                                                     "--set", "train.epochs=3000")]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root)
    for line in driver.stdout:
        if "trial(s) of" in line:
            break
    time.sleep(8)  # the trials are running
    driver.send_signal(signal.SIGINT)
    output = driver.communicate(timeout=120)[0]
    assert driver.returncode == 130, output
    assert "raysweep: interrupted" in output and "did not finish" in output and "No report was written" in output
    assert not (tmp_path / "digits" / "report").exists()
