from dataclasses import replace

import pytest
import torch

from raysweep import experiment as E
from raysweep.experiment import ExperimentError
from raysweep.launch import main
from raysweep.tasks.data import nested_subset
from raysweep.tasks.regression import LinearRegression
from raysweep.tasks.vision import Digits


@pytest.fixture
def digits(root):
    return E.load(root / "experiments" / "digits.py")


def write(tmp_path, text, name="exp.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: replace(e, grid=replace(e.grid, methods=("ensembel",))),
         r"unknown method 'ensembel'; allowed: exact, exact_meanfield, ensemble, dropout"),
        (lambda e: replace(e, task="cifar"), r"unknown task 'cifar'; allowed: regression, digits"),
        (lambda e: replace(e, grid=replace(e.grid, n=(100, -5))), r"grid.n must hold positive integers, got \[-5\]"),
        (lambda e: replace(e, grid=replace(e.grid, n=(0,))), r"grid.n must hold positive integers, got \[0\]"),
        (lambda e: replace(e, grid=replace(e.grid, n=(100, 5000))),
         r"grid.n value\(s\) \[5000\] exceed the 1143 training examples task 'digits' has"),
        (lambda e: replace(e, grid=replace(e.grid, seeds=())), r"grid.seeds is empty: the grid has no cells"),
        (lambda e: replace(e, grid=replace(e.grid, sizes=(0, 8))),
         r"grid.sizes \(model width\) must be positive integers, got \[0\]"),
        (lambda e: replace(e, grid=replace(e.grid, n=(50, 50))), r"grid.n has repeated values"),
        (lambda e: replace(e, grid=replace(e.grid, ood=("svhn",))),
         r"unknown OOD set 'svhn' for this task; allowed: held_out_classes, photos, rotated, noise"),
        (lambda e: replace(e, grid=replace(e.grid, methods=("exact",))),
         r"method 'exact' cannot run task 'digits': it needs a linear-Gaussian task"),
        (lambda e: replace(e, train=replace(e.train, epochs=0)), r"train.epochs must be > 0, got 0"),
        (lambda e: replace(e, train=replace(e.train, lr=-1.0)), r"train.lr must be > 0, got -1.0"),
        (lambda e: replace(e, name=""), r"experiment name '' must be a non-empty string"),
        (lambda e: replace(e, task=Digits(n_test=0, held_out_classes=(8, 9))),
         r"task.n_test must be in 1..1442, got 0"),
    ],
)
def test_bad_experiments_are_refused_with_a_clear_message(digits, change, message):
    with pytest.raises(ExperimentError, match=message):
        change(digits).validate()


def test_bad_method_options_are_refused(digits):
    bad = E.apply_overrides(digits, ["methods.dropout.rate=1.5"])
    with pytest.raises(ExperimentError, match=r"methods.dropout.rate must be in \(0, 1\) .*, got 1.5"):
        bad.validate()


def test_overrides_are_typed_and_dotted(digits):
    e = E.apply_overrides(digits, ["grid.n=50,100", "train.lr=0.01", "methods.ensemble.members=3",
                                   "grid.methods=[dropout]"])
    assert e.grid.n == (50, 100) and e.train.lr == 0.01 and e.methods.ensemble.members == 3
    assert e.grid.methods == ("dropout",)


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("grid.nn=5",
         r"unknown key 'grid.nn'; valid keys: name, task.n_test, .*model.width, model.depth, grid.n, grid.sizes"),
        ("train.epochs=ten", r"--set train.epochs='ten': expected int"),
        ("grid.n=1,x", r"--set grid.n='x': expected int"),
        ("train", r"expected key=value"),
        ("grid=5", r"'grid' is a section; set one of its fields, e.g. grid.n"),
        ("name.x=1", r"unknown key 'name.x'"),
    ],
)
def test_bad_overrides_are_refused(digits, assignment, message):
    with pytest.raises(ExperimentError, match=message):
        E.apply_overrides(digits, [assignment])


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(ExperimentError, match=r"experiment file '.*nope.py' does not exist"):
        E.load(tmp_path / "nope.py")
    with pytest.raises(ExperimentError, match=r"defines no `experiment = Experiment\(...\)`"):
        E.load(write(tmp_path, "x = 1\n"))
    with pytest.raises(ExperimentError, match=r"raised ZeroDivisionError: division by zero"):
        E.load(write(tmp_path, "experiment = 1 / 0\n"))
    with pytest.raises(ExperimentError, match=r"`experiment` in .* is a dict, expected raysweep.Experiment"):
        E.load(write(tmp_path, "experiment = {}\n"))


def test_launch_refuses_bad_input_before_ray_starts(root, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # importing ray would now fail: proves it is never reached
    code = main([str(root / "experiments" / "digits.py"), "--set", "grid.n=0"])
    assert code == 2
    assert "grid.n must hold positive integers, got [0]" in capsys.readouterr().err


def test_smoke_shrinks_the_grid(digits):
    small = E.smoke(digits)
    assert small.grid.n == (50, 100) and small.grid.sizes == (min(digits.grid.sizes),) and small.grid.seeds == (0,)
    assert small.train.epochs == 1 and small.eval.max_examples <= 200 and small.methods.ensemble.members == 2


def test_cell_ids_are_stable_distinct_and_depend_on_the_config(digits):
    cells = E.cells(digits)
    ids = [c["cell_id"] for c in cells]
    g = digits.grid
    assert len(set(ids)) == len(ids) == len(g.n) * len(g.sizes) * len(g.methods) * len(g.seeds)
    assert ids == [c["cell_id"] for c in E.cells(digits)]
    changed = E.cells(E.apply_overrides(digits, ["train.lr=0.5"]))
    assert not set(ids) & {c["cell_id"] for c in changed}
    # the id is a hash of the config: reordering keys does not change it
    config = {k: v for k, v in cells[0].items() if k != "cell_id"}
    assert E.cell_id(dict(reversed(list(config.items())))) == cells[0]["cell_id"]


def test_methods_without_a_network_ignore_the_size_axis(root):
    e = E.load(root / "experiments" / "regression.py")
    cells = E.cells(e)
    exact = [c for c in cells if c["method"] == "exact"]
    assert len(exact) == len(e.grid.n) * len(e.grid.seeds) and all(c["size"] is None for c in exact)


@pytest.mark.parametrize("task", [Digits(), LinearRegression(dim=5)])
def test_training_subsets_are_nested_and_eval_sets_fixed(task):
    small = task.load(100, seed=3, ood=list(task.ood_sets()), max_eval=50)
    large = task.load(300, seed=3, ood=list(task.ood_sets()), max_eval=50)
    assert torch.equal(large.train_x[:100], small.train_x) and torch.equal(large.train_y[:100], small.train_y)
    other_seed = task.load(100, seed=4, ood=list(task.ood_sets()), max_eval=50)
    assert not torch.equal(other_seed.train_x, small.train_x)
    for name, (x, _) in small.eval_sets.items():
        assert torch.equal(x, other_seed.eval_sets[name][0])


def test_nested_subset_is_a_prefix():
    assert torch.equal(nested_subset(1000, 500, 7)[:200], nested_subset(1000, 200, 7))


def test_methods_refuse_models_they_cannot_use_before_ray_starts(root):
    e = E.apply_overrides(E.load(root / "experiments" / "lm.py"), ["grid.methods=laplace"])
    with pytest.raises(ExperimentError, match=r"method 'laplace' cannot use model 'gpt': last-layer Laplace needs"):
        e.validate()
