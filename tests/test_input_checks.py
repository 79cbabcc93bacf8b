"""Issue 16: every bad input is refused before Ray starts, with the bad value and what is allowed.

Each case here was, on main, a failure inside Ray (retried three times), a traceback, a hang, a
silent success or a store write that aborted the sweep.
"""

import sys
from dataclasses import replace

import pytest

from raysweep import experiment as E
from raysweep.experiment import ExperimentError
from raysweep.launch import main
from raysweep.tasks.regression import LinearRegression


@pytest.fixture
def digits(root):
    return E.load(root / "experiments" / "digits.py")


def _grid(**values):
    return lambda e: replace(e, grid=replace(e.grid, **values))


def _section(name, **values):
    return lambda e: replace(e, **{name: replace(getattr(e, name), **values)})


BAD_EXPERIMENTS = [
    # names that escape --output or read another store
    (lambda e: replace(e, name="."), r"experiment name '\.' must be a non-empty string"),
    (lambda e: replace(e, name=".."), r"experiment name '\.\.' must be"),
    (lambda e: replace(e, name=".hidden"), r"experiment name '\.hidden' must be .*not start with '\.'"),
    (lambda e: replace(e, name="a\\b"), r"experiment name 'a\\\\b' must be"),
    (lambda e: replace(e, name="a\x00b"), r"experiment name 'a\\x00b' must be"),
    (lambda e: replace(e, name="x" * 101), r"at most 100"),
    (lambda e: replace(e, name=5), r"experiment name 5 must be"),
    # wrong types
    (_grid(n=200), r"grid.n = 200: expected a tuple of int, e.g. \(200,\), got a int"),
    (_grid(n=[50, 100]), r"grid.n = \[50, 100\]: expected a tuple of int, .*got a list"),
    (_grid(n=(True, 100)), r"grid.n = \(True, 100\): item True: expected an int, got a bool"),
    (_grid(n=(50.0,)), r"grid.n = \(50.0,\): item 50.0: expected an int, got a float"),
    (_grid(sizes=(8.5,)), r"grid.sizes = \(8.5,\): item 8.5: expected an int"),
    (_grid(seeds=(0, "1")), r"grid.seeds = \(0, '1'\): item '1': expected an int, got a str"),
    (_grid(methods="ensemble"), r"grid.methods = 'ensemble': expected a tuple of str"),
    (_section("train", lr="1e-3"), r"train.lr = '1e-3': expected a float, got a str"),
    (_section("train", epochs=2.5), r"train.epochs = 2.5: expected an int, got a float"),
    (_section("train", batch_size=True), r"train.batch_size = True: expected an int, got a bool"),
    (_section("resources", cpus="1"), r"resources.cpus = '1': expected a float, got a str"),
    (_section("eval", ece_bins=None), r"eval.ece_bins = None: expected an int, got a NoneType"),
    # not finite
    (_section("train", lr=float("nan")), r"train.lr = nan: expected a finite float \(not nan or inf\)"),
    (_section("train", weight_decay=float("inf")), r"train.weight_decay = inf: expected a finite float"),
    (_section("resources", cpus=float("nan")), r"resources.cpus = nan: expected a finite float"),
    (_section("resources", gpus=float("inf")), r"resources.gpus = inf: expected a finite float"),
    # out of range
    (_grid(seeds=(2**32,)), r"grid.seeds must be integers in \[0, 2\*\*32\), got \[4294967296\]"),
    (_grid(seeds=(2**63,)), r"grid.seeds = \(9223372036854775808,\): item .*within ±2\*\*63"),
    (_grid(seeds=(-1,)), r"grid.seeds must be integers in \[0, 2\*\*32\), got \[-1\]"),
    (_section("resources", cpus=0.0), r"resources must have cpus > 0"),
    (_section("resources", gpus=1.5), r"resources.gpus = 1.5: Ray grants a fraction of one GPU or whole GPUs"),
    (_section("resources", max_retries=-1), r"resources must have .*max_retries >= 0"),
]


@pytest.mark.parametrize("change, message", BAD_EXPERIMENTS)
def test_bad_fields_are_refused_naming_the_value(digits, change, message):
    with pytest.raises(ExperimentError, match=message):
        change(digits).validate(check_data=False)


def test_nested_task_fields_are_checked_from_their_annotations(root):
    e = E.load(root / "experiments" / "regression.py")
    with pytest.raises(ExperimentError, match=r"task.noise_var = nan: expected a finite float"):
        replace(e, task=LinearRegression(noise_var=float("nan"))).validate()
    with pytest.raises(ExperimentError, match=r"task.dim = 20.0: expected an int, got a float"):
        replace(e, task=LinearRegression(dim=20.0)).validate()
    with pytest.raises(ExperimentError, match=r"methods.ensemble.members = '5': expected an int"):
        replace(e, methods=replace(e.methods, ensemble=replace(e.methods.ensemble, members="5"))).validate()


def test_every_shipped_experiment_passes_the_checks(root):
    from conftest import EXPERIMENTS

    for path in EXPERIMENTS:
        E.load(path).validate(check_data=False)
        E.smoke(E.load(path)).validate(check_data=False)


@pytest.mark.parametrize("assignment, message", [
    ("train.lr=nan", r"--set train.lr='nan': expected a finite float"),
    ("train.lr=inf", r"--set train.lr='inf': expected a finite float"),
    ("task.n_test=-inf", r"--set task.n_test='-inf': expected int"),
    ("resources.cpus=NaN", r"--set resources.cpus='NaN': expected a finite float"),
    ("grid.seeds=0,1.5", r"--set grid.seeds='1.5': expected int"),
])
def test_bad_override_values_are_refused(digits, assignment, message):
    with pytest.raises(ExperimentError, match=message):
        E.apply_overrides(digits, [assignment])


def test_an_override_to_a_name_that_escapes_output_is_refused(digits):
    with pytest.raises(ExperimentError, match=r"experiment name '\.\.' must be"):
        E.apply_overrides(digits, ["name=.."]).validate(check_data=False)


def write(tmp_path, text):
    path = tmp_path / "exp.py"
    path.write_text(text)
    return path


def test_an_experiment_file_that_exits_is_an_error_not_a_success(tmp_path):
    with pytest.raises(ExperimentError, match=r"called sys.exit\(0\) while loading"):
        E.load(write(tmp_path, "import sys\nsys.exit(0)\n"))
    with pytest.raises(ExperimentError, match=r"called sys.exit\(None\) while loading"):
        E.load(write(tmp_path, "raise SystemExit\n"))


def test_an_experiment_file_that_never_finishes_loading_is_stopped(tmp_path):
    with pytest.raises(ExperimentError, match=r"did not finish loading within 0.3s \(an endless loop\?\); "
                                              r"set RAYSWEEP_LOAD_TIMEOUT_S"):
        E.load(write(tmp_path, "while True:\n    pass\n"), timeout_s=0.3)


@pytest.mark.parametrize("overrides, message", [
    (["grid.seeds=4294967296"], "grid.seeds must be integers in [0, 2**32)"),
    (["train.epochs=0"], "train.epochs must be > 0"),
    (["name=.."], "experiment name '..' must be"),
    (["resources.cpus=nan"], "expected a finite float"),
])
def test_launch_refuses_them_before_ray_starts_with_exit_code_2(root, capsys, monkeypatch, overrides, message):
    monkeypatch.setitem(sys.modules, "ray", None)  # importing ray would fail: proves it is never reached
    argv = [str(root / "experiments" / "digits.py")] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_launch_of_a_file_that_exits_returns_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main([str(write(tmp_path, "import sys\nsys.exit(0)\n"))]) == 2
    assert "called sys.exit(0)" in capsys.readouterr().err
