"""Training in which N is the only thing that changes: the likelihood in scored units (tokens), the
budget modes, early stopping on a validation split, and what a cell stores about its training."""

import math

import pytest
import torch
from torch import nn

from raysweep import experiment as E
from raysweep.cell import run_cell
from raysweep.experiment import Train
from raysweep.methods import METHODS, ensemble, vi
from raysweep.models.mlp import MLP
from raysweep.tasks.data import CLASSIFICATION, IGNORE_INDEX, TaskData
from raysweep.tasks.vision import Digits
from raysweep.training import budget
from raysweep.training.likelihood import training_units
from raysweep.training.sgmcmc import potential

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

VOCAB, CONTEXT, ALPHA = 5, 3, 0.7


def tiny_sequences() -> TaskData:
    """4 sequences of 3 tokens; two targets are not scored (IGNORE_INDEX): 10 scored tokens."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(VOCAB, (4, CONTEXT), generator=generator)
    y = torch.randint(VOCAB, (4, CONTEXT), generator=generator)
    y[0, 0] = y[2, 1] = IGNORE_INDEX
    return TaskData(kind=CLASSIFICATION, train_x=x, train_y=y, eval_sets={}, n_classes=VOCAB)


def tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(VOCAB, 4), nn.Linear(4, VOCAB))


def hand_log_likelihood(network: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ over scored tokens of log softmax(logits)[target], one token at a time."""
    total = torch.zeros(())
    for b in range(len(x)):
        for t in range(x.shape[1]):
            if y[b, t] != IGNORE_INDEX:
                logits = network(x[b:b + 1])[0, t]
                total = total + logits[y[b, t]] - torch.logsumexp(logits, 0)
    return total


def hand_log_prior(network: nn.Module) -> torch.Tensor:
    """log N(θ; 0, 1/α) up to its constant."""
    return -0.5 * ALPHA * sum((p ** 2).sum() for p in network.parameters())


def test_the_likelihood_counts_scored_tokens_not_sequences():
    assert training_units(tiny_sequences()) == 10


def test_the_sg_mcmc_and_swag_potential_is_the_per_token_negative_log_posterior():
    # SGHMC and cSGLD sample exp(-U), SWAG descends U / N: U must be -log p(D|θ) - log p(θ), the sum
    # over scored tokens, not N_sequences times the per-token mean (a posterior tempered by 1/T).
    data, network = tiny_sequences(), tiny_network()
    energy, _ = potential(network, data.train_x, data.train_y, CLASSIFICATION, training_units(data), ALPHA)
    expected = -(hand_log_likelihood(network, data.train_x, data.train_y) + hand_log_prior(network))
    torch.testing.assert_close(energy, expected)


def test_the_vi_log_joint_is_the_per_token_log_posterior_on_full_and_half_batches():
    import pyro
    from pyro import poutine

    data = tiny_sequences()
    network, init = vi.bayesian_network(tiny_network(), ALPHA, last_layer=False)
    model = vi.Model(network, CLASSIFICATION, None)
    with torch.no_grad():
        reference = tiny_network()  # the same weights as `init`, as a plain network
    units = training_units(data)

    def log_joint(x, y):
        trace = poutine.trace(poutine.condition(model, data=init)).get_trace(x, y, units)
        trace.compute_log_prob()
        likelihood = trace.nodes["y"]["log_prob_sum"]
        prior = sum(site["log_prob_sum"] for name, site in trace.nodes.items() if name in init)
        return likelihood, prior

    likelihood, prior = log_joint(data.train_x, data.train_y)
    with torch.no_grad():
        torch.testing.assert_close(likelihood, hand_log_likelihood(reference, data.train_x, data.train_y))
        gaussian_constant = -0.5 * sum(p.numel() for p in reference.parameters()) * math.log(2 * math.pi / ALPHA)
        torch.testing.assert_close(prior, hand_log_prior(reference) + gaussian_constant)
        # a minibatch of 2 sequences with 5 scored tokens stands for all 10: its sum counts twice
        half, _ = log_joint(data.train_x[:2], data.train_y[:2])
        torch.testing.assert_close(half, units / 5 * hand_log_likelihood(reference, data.train_x[:2], data.train_y[:2]))
    pyro.clear_param_store()


def test_vi_runs_on_the_language_model_smoke_experiment(root):
    e = E.smoke(E.load(root / "experiments" / "lm.py"))
    e = E.apply_overrides(e, ["grid.methods=vi", "grid.n=2048"]).validate()
    rows = run_cell(E.cells(e)[0], report=lambda rows: None)
    # one smoke epoch of a byte-level LM is near chance: the quality gate may call it degenerate, but
    # the cell must run (it crashed with a plate shape mismatch) and score every split
    assert len(rows) == 1 + len(e.grid.ood) and {r["status"] for r in rows} <= {"ok", "degenerate"}
    assert all(math.isfinite(r["nll"]) and r["epistemic"] >= 0 for r in rows if r["split"] == "test")
    assert all(r["eval_hash"] for r in rows)


# ---------------------------------------------------------------------------------------------
# Budgets

def test_early_stopping_stops_after_patience_steps_without_improvement_and_keeps_the_best():
    rule = budget.EarlyStopping(Train(until="converged", patience_steps=30, min_steps=0), steps_per_epoch=10)
    params = {"w": torch.zeros(2, 1)}
    stops = []
    for epoch, losses in enumerate([(3.0, 3.0), (2.0, 2.5), (2.1, 1.0), (2.2, 1.1), (2.3, 1.2), (2.4, 1.3)], 1):
        params["w"].fill_(epoch)
        stops.append(rule.update(torch.tensor(losses), params))
    # member 1 last improved at epoch 3 (step 30): steps 40 and 50 are patience 10 and 20, step 60 is 30
    assert stops == [False] * 5 + [True]
    rule.restore(params)
    assert params["w"].flatten().tolist() == [2.0, 3.0]  # each member's own best epoch


def digits_cell(**train) -> dict:
    e = E.Experiment(name="t", task=Digits(n_test=200), model=MLP(width=32, depth=1),
                     grid=E.Grid(n=(300,), sizes=(32,), methods=("ensemble",), seeds=(0,)),
                     train=Train(batch_size=32, lr=1e-2, **train),
                     methods=E.MethodOptions(ensemble=ensemble.Options(members=2)))
    return E.cells(e.validate())[0]


def test_a_converged_cell_stops_on_its_validation_loss_and_says_why():
    rows = run_cell(digits_cell(until="converged", val_fraction=0.2, patience_steps=40, max_epochs=400),
                    report=lambda rows: None)
    row = rows[0]
    assert row["stop_reason"] == "converged" and row["epochs_run"] < 400
    assert row["n_fit"] == 240 and row["epoch"] == row["epochs_run"]  # 60 of the 300 held out
    assert row["budget"].startswith("converged(val_fraction=0.2,")
    assert 0 < row["val_loss"] < 1 and 0 <= row["train_loss"] < row["val_loss"] * 3


def test_the_validation_loss_stored_is_that_of_the_weights_kept():
    cell = digits_cell(until="converged", val_fraction=0.2, patience_steps=40, max_epochs=400)
    task, train = Digits(n_test=200), Train(**cell["train"])
    data = budget.hold_out_validation(task.load(300, 0, [], 200), train, 0)
    log = budget.TrainingLog(lambda epoch, loss: None)
    posterior = METHODS["ensemble"].fit(data, MLP(width=32, depth=1), ensemble.Options(members=2), train, 0, log)
    val_x, val_y = data.extras["validation"]
    probs = posterior.predict(val_x)  # (M, B, C)
    member_nll = -probs.log().gather(-1, val_y.expand(2, -1)[..., None]).mean()
    assert log.outcome.val_loss == pytest.approx(member_nll.item(), rel=1e-4)


@pytest.mark.parametrize("train", [dict(until="converged", val_fraction=0.2, patience_steps=40, max_epochs=400),
                                   dict(until="converged", min_steps=200, patience_steps=10, max_epochs=400),
                                   dict(until="converged", patience_steps=10_000, max_epochs=3),
                                   dict(epochs=2, min_steps=30)])
def test_guaranteed_steps_bound_the_steps_every_run_takes(train):
    # per-cell IVON beta2 relies on it: a lower bound, and the exact count for the fixed budget
    row = run_cell(digits_cell(**train), report=lambda rows: None)[0]
    steps_run = row["epoch"] * budget.steps_per_epoch(Train(batch_size=32, **train), row["n_fit"])
    bound = budget.guaranteed_steps(Train(batch_size=32, **train), row["n_fit"])
    assert 0 < bound <= steps_run
    assert bound == steps_run or train.get("until") == "converged"


def test_the_cap_and_the_fixed_budget_are_stored_as_such():
    capped = run_cell(digits_cell(until="converged", patience_steps=10_000, max_epochs=3), report=lambda rows: None)[0]
    assert (capped["stop_reason"], capped["epochs_run"]) == ("cap", 3)
    fixed = run_cell(digits_cell(epochs=2, min_steps=30), report=lambda rows: None)[0]
    # 300 examples in batches of 32: 10 steps an epoch, raised to 3 epochs by min_steps; nothing held out
    assert (fixed["stop_reason"], fixed["epochs_run"], fixed["n_fit"], fixed["val_loss"]) == ("fixed", 3, 300, None)


def test_a_language_model_cell_stores_the_epochs_it_ran_not_one(root):
    e = E.apply_overrides(E.smoke(E.load(root / "experiments" / "lm.py")),
                          ["grid.methods=ensemble", "grid.n=2048", "train.until=fixed", "train.epochs=3",
                           "train.batch_size=16"]).validate()
    row = run_cell(E.cells(e)[0], report=lambda rows: None)[0]
    assert row["epochs_run"] == row["epoch"] == 3  # 2048 tokens = 32 sequences: 2 steps an epoch


def test_bad_budgets_are_refused_before_any_work():
    assert "train.until must be one of fixed, converged" in Train(until="forever").problems()
    assert "train.val_fraction" in Train(until="converged", val_fraction=0.6).problems()
