"""Last-layer Laplace against the exact conjugate posterior, and its options."""


import pytest
import torch
from torch import nn

from raysweep.evaluate import evaluate
from raysweep.experiment import Train
from raysweep.methods import METHODS, laplace
from raysweep.models.mlp import MLP
from raysweep.tasks.regression import LinearRegression
from raysweep.tasks.vision import Digits

TINY = Train(epochs=2, batch_size=32, lr=1e-2)


def ignore(*args):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("hessian", laplace.HESSIANS)
def test_laplace_on_the_linear_gaussian_task_is_the_exact_posterior(hessian, linear_model):
    task = LinearRegression(dim=5, noise_var=0.25, prior_precision=1.0)
    data = task.load(100, 0, ["shifted"], 300)
    options = laplace.Options(hessian=hessian, prior="fixed", prior_precision=task.prior_precision)
    approx = METHODS["laplace"].fit(data, linear_model, options, TINY, 0, ignore)
    truth = METHODS["exact"].fit(data, None, None, TINY, 0, ignore)
    torch.testing.assert_close(approx.mean[0], truth.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(approx.covariance, truth.covariance, rtol=1e-10, atol=1e-14)
    assert approx.noise_var == task.noise_var  # taken from the task, which knows it
    ours, theirs = evaluate(approx, data), evaluate(truth, data)
    for split in ("test", "shifted"):
        for key in ("epistemic", "total", "nll", "rmse"):
            assert ours[split][key] == pytest.approx(theirs[split][key], rel=1e-9, abs=1e-12)


def test_marginal_likelihood_picks_the_prior_precision_of_highest_evidence(linear_model):
    # Closed-form evidence of Bayesian linear regression: the chosen α must be its maximiser.
    task = LinearRegression(dim=5, noise_var=0.25, prior_precision=1.0)
    data = task.load(60, 0, [], 10)
    alpha = METHODS["laplace"].fit(data, linear_model, laplace.Options(), TINY, 0, ignore).alpha
    x, y = data.train_x.double(), data.train_y.double()

    def evidence(a):
        covariance = 0.25 * torch.eye(60, dtype=torch.float64) + x @ x.T / a  # y ~ N(0, σ²I + XXᵀ/α)
        return torch.distributions.MultivariateNormal(torch.zeros(60, dtype=torch.float64),
                                                      covariance).log_prob(y).item()

    assert evidence(alpha) >= max(evidence(alpha * 1.05), evidence(alpha / 1.05))


@pytest.mark.parametrize("hessian", laplace.HESSIANS)
def test_kron_and_full_sampling_match_their_covariance(hessian):
    data = Digits().load(80, 0, [], 20)
    posterior = METHODS["laplace"].fit(data, MLP(width=6), laplace.Options(hessian=hessian, samples=4000), TINY, 0,
                                       ignore)
    draws = posterior.weight_samples.reshape(4000, -1)  # (S, C·F)
    empirical = torch.cov(draws.T)
    covariance = posterior.covariance
    scale = covariance.diagonal().max()
    assert (empirical - covariance).abs().max() < 0.1 * scale
    # probit variance per class equals the weight covariance pushed through the features
    phi = posterior.features(data.eval_sets["test"][0])
    C, F = posterior.mean.shape
    exact_var = torch.stack([torch.einsum("bf,fg,bg->b", phi, covariance[c * F:(c + 1) * F, c * F:(c + 1) * F], phi)
                             for c in range(C)], 1)
    torch.testing.assert_close(posterior._output_variance(phi), exact_var)


def test_probit_gives_one_predictive_that_sums_to_one():
    data = Digits().load(80, 0, [], 20)
    posterior = METHODS["laplace"].fit(data, MLP(width=6), laplace.Options(predictive="probit"), TINY, 0, ignore)
    probs = posterior.predict(data.eval_sets["test"][0])
    assert probs.shape == (1, 20, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 20))


class EndsInSoftmax:
    def build(self, input_dim, output_dim, dropout=0.0):
        return nn.Sequential(nn.Linear(input_dim, output_dim), nn.Softmax(-1))


def test_a_model_whose_last_layer_is_not_linear_is_refused_before_training():
    def fail(*args):
        raise AssertionError("training started")

    with pytest.raises(ValueError, match=r"last layer is linear .* ends in Softmax"):
        METHODS["laplace"].fit(Digits().load(20, 0, [], 5), EndsInSoftmax(), laplace.Options(), TINY, 0, fail)
    assert METHODS["laplace"].unsupported_model(MLP()) is None
