"""Each method's posterior on the linear-Gaussian model (models/linear.py) against its known target,
computed here in numpy: the exact posterior N(m_N, S_N), S_N = (αI + XᵀX/σ²)⁻¹, and the optimal
mean-field Gaussian (mean m_N, variances 1/Λ_ii with Λ = S_N⁻¹; Bishop 2006, §10.1.2)."""

import numpy as np
import pytest
import torch

from raysweep.evaluate import evaluate
from raysweep.experiment import Train
from raysweep.methods import METHODS, ensemble, laplace, vi
from raysweep.models.linear import Linear
from raysweep.tasks.data import REGRESSION, TaskData
from raysweep.tasks.regression import LinearRegression

NOISE_VAR, ALPHA = 0.25, 1.0


def ignore(*args):
    pass


def correlated_data(n: int, d: int = 4, seed: int = 0) -> TaskData:
    """Linear-Gaussian data whose training inputs are strongly correlated, so that the posterior
    precision is far from diagonal, evaluated on isotropic inputs, which probe every direction: there
    the mean-field optimum is visibly narrower than the exact posterior."""
    rng = np.random.default_rng(seed)
    mixing = np.eye(d) + 0.3 * (np.ones((d, d)) - np.eye(d))  # inputs with pairwise correlation ≈ 0.6

    def draw(count, scale=1.0, mix=False):
        x = scale * rng.standard_normal((count, d)) @ (mixing if mix else np.eye(d))
        return x, x @ w + NOISE_VAR ** 0.5 * rng.standard_normal(count)

    w = rng.standard_normal(d)
    x, y = draw(n, mix=True)
    as_tensors = lambda pair: (torch.tensor(pair[0]).float(), torch.tensor(pair[1]).float())  # noqa: E731
    return TaskData(kind=REGRESSION, train_x=torch.tensor(x).float(), train_y=torch.tensor(y).float(),
                    eval_sets={"test": as_tensors(draw(400)), "shifted": as_tensors(draw(400, 3.0))},
                    extras={"noise_var": NOISE_VAR, "prior_precision": ALPHA})


def mean_eu(x: np.ndarray, covariance: np.ndarray) -> float:
    """Mean over inputs of ½ log(1 + xᵀCx/σ²), the EU of a Gaussian posterior with covariance C."""
    return float(np.mean(0.5 * np.log1p(np.einsum("bi,ij,bj->b", x, covariance, x) / NOISE_VAR)))


def targets(data: TaskData) -> dict[str, dict[str, float]]:
    """Per split: EU of the exact posterior and of the optimal mean-field Gaussian, in numpy."""
    x = data.train_x.double().numpy()
    precision = ALPHA * np.eye(x.shape[1]) + x.T @ x / NOISE_VAR
    exact, meanfield = np.linalg.inv(precision), np.diag(1 / np.diag(precision))
    return {split: {"exact": mean_eu(inputs.double().numpy(), exact),
                    "meanfield": mean_eu(inputs.double().numpy(), meanfield)}
            for split, (inputs, _) in data.eval_sets.items()}


def eu(method: str, data: TaskData, options, train: Train, seed: int = 1) -> dict[str, float]:
    posterior = METHODS[method].fit(data, Linear(NOISE_VAR), options, train, seed, ignore)
    return {split: row["epistemic"] for split, row in evaluate(posterior, data).items()}


def test_linear_model_outputs_the_known_noise_and_refuses_other_tasks():
    network = Linear(NOISE_VAR).build(3, 2)
    outputs = network(torch.randn(5, 3))
    from raysweep.training.likelihood import gaussian_head

    assert torch.allclose(gaussian_head(outputs)[1], torch.full((5,), NOISE_VAR))
    assert sum(p.numel() for p in network.parameters()) == 3  # w only: the noise is not learnable
    assert "must equal task.noise_var=0.25" in Linear(0.5).problems_with(LinearRegression())
    assert Linear(0.25).problems_with(LinearRegression()) is None


@pytest.mark.parametrize("data", [LinearRegression(dim=5).load(60, 0, ["shifted"], 400), correlated_data(60)],
                         ids=["isotropic", "correlated"])
def test_laplace_on_the_linear_model_is_the_exact_posterior(data):
    ours = eu("laplace", data, laplace.Options(prior="fixed", prior_precision=ALPHA, hessian="full"),
              Train(epochs=2, batch_size=32))
    for split, target in targets(data).items():
        assert ours[split] / target["exact"] == pytest.approx(1, abs=0.02)


@pytest.mark.parametrize("data", [LinearRegression(dim=5).load(60, 0, ["shifted"], 400), correlated_data(60)],
                         ids=["isotropic", "correlated"])
def test_exact_meanfield_is_the_best_diagonal_gaussian(data):
    ours = eu("exact_meanfield", data, None, None)
    for split, target in targets(data).items():
        assert ours[split] == pytest.approx(target["meanfield"], rel=1e-9)


def test_meanfield_vi_reaches_the_optimal_meanfield_gaussian_and_falls_short_of_the_exact():
    data = correlated_data(200)
    ours = eu("vi", data, vi.Options(guide="meanfield", lr=0.05, samples=500, prior_precision=ALPHA),
              Train(epochs=1, min_steps=800, batch_size=50))
    for split, target in targets(data).items():
        assert target["meanfield"] < 0.8 * target["exact"]  # the data make the shortfall large
        assert ours[split] / target["meanfield"] == pytest.approx(1, abs=0.05)


def test_anchored_ensemble_draws_exact_posterior_samples_and_the_plain_one_does_not():
    data = correlated_data(100)
    members = 64
    train = Train(epochs=1, min_steps=1500, batch_size=100, lr=0.05)
    anchored = eu("ensemble", data, ensemble.Options(members=members, prior="anchored", prior_precision=ALPHA), train)
    plain = eu("ensemble", data, ensemble.Options(members=members), train)
    plug_in_bias = (members - 1) / members  # the population variance over S draws
    for split, target in targets(data).items():
        assert anchored[split] / (plug_in_bias * target["exact"]) == pytest.approx(1, abs=0.10)
        # every plain member converges to the same least-squares fit: its spread is only what
        # training has not yet removed
        assert plain[split] < 0.5 * target["exact"]
