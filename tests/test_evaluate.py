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
