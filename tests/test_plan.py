import sys

import pytest

from raysweep import experiment as E
from raysweep.launch import main
from raysweep.plan import estimate


def test_plan_flops_follow_the_stated_formula(root):
    e = E.apply_overrides(E.load(root / "experiments" / "digits.py"),
                          ["grid.n=100", "grid.sizes=16", "grid.methods=ensemble", "grid.seeds=0", "train.until=fixed",
                           "train.epochs=3", "train.min_steps=0", "methods.ensemble.members=5"])
    (cost,) = estimate(e)
    params = (64 * 16 + 16) + (16 * 16 + 16) + (16 * 8 + 8)  # MLP 64 -> 16 -> 16 -> 8 (8 and 9 held out)
    assert cost.params == params
    assert cost.train_flops == 6 * params * 1 * (3 * 100) * 5
    eval_examples = sum(len(x)
                        for x, _ in e.task.load(100, 0, list(e.grid.ood), e.eval.max_examples).eval_sets.values())
    assert cost.eval_flops == 2 * params * eval_examples * 5


def test_plan_bounds_the_converged_mode_by_its_cap(root):
    e = E.apply_overrides(E.load(root / "experiments" / "digits.py"),
                          ["grid.n=100", "grid.sizes=16", "grid.methods=ensemble", "grid.seeds=0",
                           "train.until=converged", "train.max_epochs=40", "methods.ensemble.members=5"])
    (cost,) = estimate(e)
    assert cost.train_flops == 6 * cost.params * (40 * 100) * 5


def test_plan_runs_nothing_and_works_offline_for_a_hub_corpus(root, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # importing ray would fail: --plan never starts it
    monkeypatch.setenv("RAYSWEEP_SCALE", "full")
    assert main([str(root / "experiments" / "lm.py"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "324 cells" in out and "GPU-hours" in out and "6·P" in out


def test_an_unreachable_dataset_is_a_clear_error_before_work(root, monkeypatch):
    monkeypatch.setenv("RAYSWEEP_SCALE", "full")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = E.load(root / "experiments" / "lm.py")
    with pytest.raises(E.ExperimentError, match="cannot reach the data of task"):
        e.validate()


# Counted by hand from each method's fit: (networks trained, training phases, S at prediction) under
# the options below. A method added to the registry without a row here fails the test below.
HAND_COUNTS = {
    "exact": (0, 0, 1),  # no network: no training FLOPs, P = d
    "exact_meanfield": (0, 0, 1),  # likewise
    "ensemble": (5, 1, 5),  # members=5
    "dropout": (1, 1, 32),  # samples=32
    "vi": (1, 1, 32),
    "laplace": (1, 1, 32),
    "swag": (1, 2, 32),  # training, then as many SWA steps
    "sghmc": (1, 2, 16),  # training (burn-in), then as many sampler steps
    "csgld": (1, 2, 16),  # cycles=4 x samples_per_cycle=4
    "ivon": (1, 1, 32),
    "lora_laplace": (1, 1, 32),  # samples=32 (P counted on the MLP here: the plan does not run fit)
}


@pytest.mark.parametrize("method", sorted(E.METHODS))
def test_plan_counts_every_methods_networks_phases_and_samples_by_hand(root, method):
    assert method in HAND_COUNTS, f"add the hand count of method {method!r} to HAND_COUNTS"
    networks, phases, samples = HAND_COUNTS[method]
    e = E.apply_overrides(E.load(root / "experiments" / "regression.py"),
                          ["grid.n=100", "grid.sizes=16", f"grid.methods={method}", "grid.seeds=0", "grid.ood=",
                           "train.epochs=3", "train.min_steps=0", "methods.ensemble.members=5"])
    (cost,) = estimate(e)
    d = e.task.dim
    params = (d * 16 + 16) + (16 * 16 + 16) + (16 * 2 + 2) if networks else d  # MLP d -> 16 -> 16 -> (mean, var)
    assert cost.params == params
    assert cost.train_flops == 6 * params * (3 * 100) * phases * networks
    assert cost.eval_flops == 2 * params * e.task.n_test * samples


def test_plan_counts_one_more_evaluation_per_sub_ensemble_size(root):
    e = E.apply_overrides(E.load(root / "experiments" / "regression.py"),
                          ["grid.n=100", "grid.sizes=16", "grid.methods=ensemble", "grid.seeds=0", "grid.ood=",
                           "methods.ensemble.members=8", "grid.members=2,4"])
    (cost,) = estimate(e)
    assert cost.eval_flops == 2 * cost.params * e.task.n_test * (8 + 2 + 4)


def test_every_cell_stores_the_compute_it_ran(root):
    """C = 6 · P · examples seen · networks, counted from what the cell ran: its epochs (all phases)
    over its fitted examples; for the fixed budget of 3 epochs of 100 examples, by hand."""
    from raysweep.cell import run_cell

    e = E.apply_overrides(E.load(root / "experiments" / "regression.py"),
                          ["grid.n=100", "grid.sizes=8", "grid.methods=ensemble,dropout", "grid.seeds=0", "grid.ood=",
                           "train.until=fixed", "train.epochs=3", "train.min_steps=0", "methods.ensemble.members=5"])
    for cell in E.cells(e.validate()):
        (row,) = [r for r in run_cell(cell, lambda rows: None) if r["kind"] == "final"]
        networks = 5 if cell["method"] == "ensemble" else 1
        assert row["epoch"] == 3 and row["n_fit"] == 100
        assert row["train_flops"] == 6 * row["params"] * (3 * 100) * networks
