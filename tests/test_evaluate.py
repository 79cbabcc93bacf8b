"""Streaming evaluation: the batch size adapts to the size of a prediction and never changes a result."""

import pytest
import torch

from raysweep import evaluate as ev
from raysweep import uncertainty as U
from raysweep.tasks.data import CLASSIFICATION, TaskData


class TokenPosterior:
    """S members, each a fixed table of next-token logits per input token: (S, B, T, V) predictions."""

    def __init__(self, members=3, vocab=50):
        self.logits = torch.randn(members, vocab, vocab, generator=torch.Generator().manual_seed(0))
        self.largest = 0

    def predict(self, ids):
        prediction = self.logits[:, ids].softmax(-1)  # (S, B, T, V)
        self.largest = max(self.largest, prediction.numel())
        return prediction


def token_data(sequences=40, context=16, vocab=50):
    ids = torch.randint(0, vocab, (2, sequences, context + 1), generator=torch.Generator().manual_seed(1))
    sets = {"test": (ids[0, :, :-1], ids[0, :, 1:]), "other": (ids[1, :, :-1], ids[1, :, 1:])}
    return TaskData(CLASSIFICATION, sets["test"][0], sets["test"][1], sets, n_classes=vocab)


def test_a_small_prediction_budget_shrinks_batches_and_changes_no_metric(monkeypatch):
    data = token_data()
    whole = ev.evaluate(TokenPosterior(), data)
    monkeypatch.setattr(ev, "PREDICTION_BUDGET", 3 * 16 * 50 * 2)  # two sequences of (S, T, V) per batch
    posterior = TokenPosterior()
    streamed = ev.evaluate(posterior, data)

    assert posterior.largest == 3 * 16 * 50 * 2
    for split in whole:
        for key, value in whole[split].items():
            assert streamed[split][key] == pytest.approx(value, rel=1e-12), (split, key)


def test_token_metrics_equal_the_decomposition_of_every_token_at_once():
    data, posterior = token_data(), TokenPosterior()
    probs = posterior.logits[:, data.eval_sets["test"][0]].softmax(-1).double().flatten(1, 2)  # (S, B·T, V)
    expected = U.decompose(probs)
    row = ev.evaluate(posterior, data)["test"]
    assert row["epistemic"] == pytest.approx(expected["epistemic"].mean().item(), rel=1e-12)
    assert row["total"] == pytest.approx(expected["total"].mean().item(), rel=1e-12)
    assert row["nll"] == pytest.approx(U.nll(probs.mean(0), data.eval_sets["test"][1].reshape(-1)).mean().item(),
                                       rel=1e-12)


class OverconfidentPosterior:
    """Two members whose logits are 3x those that generated the labels: a temperature of about 3
    calibrates their predictive. Inputs are the true logits (B, C)."""

    def predict(self, logits):
        return torch.stack([(3 * logits).softmax(-1), (3 * logits + 0.1).softmax(-1)])  # (S=2, B, C)


def overconfident_data(n=4000, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2 * n, classes, generator=g, dtype=torch.float64)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
    return TaskData(kind=CLASSIFICATION, train_x=logits[:1], train_y=labels[:1], n_classes=classes,
                    eval_sets={"test": (logits[n:], labels[n:])}, extras={"validation": (logits[:n], labels[:n])})


def test_temperature_scaling_minimises_the_validation_nll_and_calibrates_the_test_set():
    data = overconfident_data()
    posterior = OverconfidentPosterior()
    temperature = ev.fit_temperature(posterior, data)
    # an independent search: NLL of the tempered predictive on the validation split over a fine grid
    val_x, val_y = data.extras["validation"]
    log_p = posterior.predict(val_x).mean(0).log()
    grid = torch.linspace(1, 6, 2001, dtype=torch.float64)
    nlls = torch.stack([torch.nn.functional.cross_entropy(log_p / t, val_y) for t in grid])
    assert temperature == pytest.approx(grid[nlls.argmin()].item(), abs=0.01)
    assert temperature == pytest.approx(3, rel=0.1)  # the logits were sharpened 3x
    test = ev.evaluate(posterior, data)["test"]
    assert test["nll_ts"] < test["nll"] and test["ece_ts"] < 0.5 * test["ece"]
    assert test["temperature"] == temperature


def test_no_temperature_without_a_validation_split():
    data = overconfident_data()
    data.extras.clear()
    assert ev.fit_temperature(OverconfidentPosterior(), data) is None
    assert "nll_ts" not in ev.evaluate(OverconfidentPosterior(), data)["test"]


class FreshDrawsPosterior:
    """S members drawn afresh at every predict, as MC dropout's masks are: Dirichlet probabilities
    around the inputs' softmax. Records every draw so the test can score them independently."""

    def __init__(self, samples=8):
        self.samples, self.generator, self.drawn = samples, torch.Generator().manual_seed(3), []

    def predict(self, logits):
        concentration = 5 * logits.softmax(-1) + 0.1
        gammas = torch._standard_gamma(concentration.expand(self.samples, *logits.shape).contiguous(),
                                       generator=self.generator)
        probs = gammas / gammas.sum(-1, keepdim=True)  # (S, B, C)
        self.drawn.append(probs)
        return probs


def test_sub_ensembles_are_the_first_m_of_the_same_draws_and_their_temperature_is_their_own():
    data = overconfident_data(n=600)
    data.eval_sets["other"] = (0.2 * data.eval_sets["test"][0], None)
    posterior = FreshDrawsPosterior()
    result = ev.evaluate_sub_ensembles(posterior, data, (2, 4, 8))
    val_x, val_y = data.extras["validation"]
    # The recorded batches, in order: the validation split (temperatures), then each evaluation set.
    validation, test, other = torch.cat(posterior.drawn, 1).split(
        [len(val_x), len(data.eval_sets["test"][0]), len(data.eval_sets["other"][0])], dim=1)
    labels = data.eval_sets["test"][1]
    for m in (2, 4, 8, None):
        first = slice(None, m)
        # Independent: the decomposition, NLL and temperature of the first m of the recorded draws.
        parts = U.decompose(test[first].double())
        assert result[m]["test"]["epistemic"] == pytest.approx(parts["epistemic"].mean().item(), rel=1e-10)
        assert result[m]["other"]["epistemic"] == pytest.approx(
            U.decompose(other[first].double())["epistemic"].mean().item(), rel=1e-10)
        assert result[m]["test"]["nll"] == pytest.approx(
            U.nll(test[first].double().mean(0), labels).mean().item(), rel=1e-10)
        log_p = validation[first].double().mean(0).log()
        grid = torch.linspace(0.3, 3, 2701, dtype=torch.float64)
        best = grid[torch.stack([torch.nn.functional.cross_entropy(log_p / t, val_y) for t in grid]).argmin()]
        assert result[m]["test"]["temperature"] == pytest.approx(best.item(), abs=0.005)
    assert result[8] == result[None]  # m = S is the whole posterior, from the same draws
    eu = [result[m]["test"]["epistemic"] for m in (2, 4, 8)]
    assert eu[0] < eu[1] < eu[2]  # nested draws: the plug-in MI grows with m like (m - 1) / m
