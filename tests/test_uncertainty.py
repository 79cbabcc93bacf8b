import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAUROC, MulticlassCalibrationError

from raysweep import uncertainty as U


def random_probs(s, b, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s, b, c, generator=g, dtype=torch.float64).mul(2).softmax(-1)


def test_disagreeing_confident_members_are_purely_epistemic():
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)  # (S=2, B=1, C=2)
    parts = U.decompose(probs)
    assert parts["total"].item() == pytest.approx(math.log(2))
    assert parts["aleatoric"].item() == 0.0  # zero probabilities are safe: 0 log 0 = 0
    assert parts["epistemic"].item() == pytest.approx(math.log(2))


def test_agreeing_uncertain_members_are_purely_aleatoric():
    probs = torch.full((4, 3, 5), 0.2, dtype=torch.float64)
    parts = U.decompose(probs)
    np.testing.assert_allclose(parts["total"], math.log(5))
    np.testing.assert_allclose(parts["aleatoric"], math.log(5))
    np.testing.assert_allclose(parts["epistemic"], 0.0, atol=1e-15)


def test_one_sample_has_exactly_zero_epistemic():
    parts = U.decompose(random_probs(1, 50, 7))
    assert torch.equal(parts["epistemic"], torch.zeros(50, dtype=torch.float64))


def test_decompose_matches_a_direct_numpy_computation_and_keeps_numpy_type():
    probs = random_probs(8, 100, 10).numpy()
    parts = U.decompose(probs)
    assert isinstance(parts["total"], np.ndarray)
    pbar = probs.mean(0)
    total = -(pbar * np.log(pbar)).sum(-1)
    aleatoric = -(probs * np.log(probs)).sum(-1).mean(0)
    np.testing.assert_allclose(parts["total"], total, rtol=1e-12)
    np.testing.assert_allclose(parts["aleatoric"], aleatoric, rtol=1e-12)
    assert (parts["epistemic"] >= -1e-12).all()


def test_extra_token_dimension_is_decomposed_per_position():
    probs = random_probs(4, 6, 11).reshape(4, 2, 3, 11)  # (S, B, T, V)
    parts = U.decompose(probs)
    flat = U.decompose(probs.reshape(4, 6, 11))
    np.testing.assert_allclose(parts["epistemic"].reshape(6), flat["epistemic"])


def test_gaussian_epistemic_matches_the_closed_form_for_a_shared_noise():
    means = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)  # variance of means: 1 and 0
    variances = torch.full_like(means, 0.25)
    parts = U.decompose_gaussian(means, variances)
    np.testing.assert_allclose(parts["epistemic_var"], [1.0, 0.0])
    np.testing.assert_allclose(parts["epistemic"], [0.5 * math.log(1 + 1.0 / 0.25), 0.0], atol=1e-15)
    np.testing.assert_allclose(parts["aleatoric"], 0.5 * math.log(2 * math.pi * math.e * 0.25))


def test_nll_accuracy_brier_by_hand():
    pbar = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    np.testing.assert_allclose(U.nll(pbar, labels), [-math.log(0.7), -math.log(0.1)])
    assert U.accuracy(pbar, labels) == 0.5
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.9**2 + 0.8**2)) / 2
    assert U.brier(pbar, labels) == pytest.approx(brier)


def test_nll_of_a_zero_probability_is_finite():
    assert torch.isfinite(U.nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))).all()


@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_matches_torchmetrics(n_bins):
    pbar = random_probs(1, 2000, 10, seed=3)[0]
    labels = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(4))
    reference = MulticlassCalibrationError(num_classes=10, n_bins=n_bins, norm="l1")(pbar.float(), labels)
    assert U.expected_calibration_error(pbar, labels, n_bins) == pytest.approx(reference.item(), abs=1e-6)


def test_auroc_matches_torchmetrics_including_ties():
    g = torch.Generator().manual_seed(5)
    score_in = torch.randint(0, 20, (300,), generator=g).double()
    score_out = torch.randint(5, 25, (200,), generator=g).double()
    scores = torch.cat([score_in, score_out])
    target = torch.cat([torch.zeros(300), torch.ones(200)]).long()
    reference = BinaryAUROC()(scores, target).item()
    assert U.ood_auroc(score_in, score_out) == pytest.approx(reference, abs=1e-6)
    assert U.ood_auroc([0.0, 1.0], [2.0, 3.0]) == 1.0


def test_auroc_needs_both_sides():
    with pytest.raises(ValueError, match="needs scores on both sides, got 0 ID and 2 OOD"):
        U.ood_auroc([], [1.0, 2.0])


def torch_uncertainty_metric(module: str, name: str):
    """A torch-uncertainty metric class, loaded from its file: the package's own __init__ imports
    Lightning (for its CLI), which the metrics themselves do not need."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torch_uncertainty")
    path = Path(spec.submodule_search_locations[0]) / "metrics" / "classification" / f"{module}.py"
    loaded = importlib.util.spec_from_file_location(f"_tu_{module}", path)
    code = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(code)
    return getattr(code, name)


@pytest.mark.parametrize("seed", range(5))
def test_aurc_and_augrc_match_torch_uncertainty(seed):
    predictive = random_probs(1, 500, 10, seed)[0]  # (B, C), continuous confidences: no ties
    labels = torch.randint(10, (500,), generator=torch.Generator().manual_seed(seed + 10))
    labels[:200] = predictive[:200].argmax(-1)  # some right, some wrong
    confidence, predicted = predictive.max(-1)
    correct = (predicted == labels).double()
    for ours, name in ((U.aurc, "AURC"), (U.augrc, "AUGRC")):
        metric = torch_uncertainty_metric("risk_coverage", name)()
        metric.update(predictive, labels)
        assert ours(confidence, correct) == pytest.approx(metric.compute().item(), rel=1e-6)


def test_aurc_of_a_perfect_ranking_and_of_no_ranking():
    correct = np.array([1.0] * 80 + [0.0] * 20)
    perfect = U.aurc(np.linspace(1, 0, 100), correct)  # every error ranked below every success
    # r(k/N) = 0 for k <= 80, then (k - 80)/k: the closed-form trapezoid of those risks
    risks = np.array([max(0, k - 80) / k for k in range(1, 101)])
    assert perfect == pytest.approx(((risks[:-1] + risks[1:]) / 2).sum() / 100 / 0.99)
    reversed_ = U.aurc(np.linspace(0, 1, 100), correct)  # every error ranked above every success
    assert reversed_ > 0.5 > perfect


@pytest.mark.parametrize("seed", range(5))
def test_fpr_at_95_tpr_matches_torch_uncertainty_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    score_in = torch.randint(0, 20, (300,), generator=g).double()  # integers: many ties
    score_out = torch.randint(5, 25, (200,), generator=g).double()
    metric = torch_uncertainty_metric("fpr", "FPR95")(pos_label=1)
    metric.update(torch.cat([score_in, score_out]), torch.cat([torch.zeros(300), torch.ones(200)]).long())
    assert U.fpr_at_tpr(score_in, score_out, 0.95) == pytest.approx(metric.compute().item())


def test_fpr_at_95_tpr_of_separable_and_identical_scores():
    assert U.fpr_at_tpr(np.zeros(50), np.ones(50)) == 0.0
    assert U.fpr_at_tpr(np.ones(50), np.ones(50)) == 1.0


def test_the_members_axis_evaluates_nested_sub_ensembles_of_one_pool(root):
    """grid.members: rows for the first m members of the same trained ensemble, with EU equal to
    torch-uncertainty's mutual information of those m members' probabilities."""
    from raysweep import experiment as E
    from raysweep.cell import run_cell
    from raysweep.methods import METHODS

    e = E.apply_overrides(E.load(root / "experiments" / "digits.py"),
                          ["grid.methods=ensemble", "grid.n=200", "grid.sizes=8", "grid.seeds=0", "grid.ood=",
                           "grid.members=1,2,4", "methods.ensemble.members=4", "train.until=fixed", "train.epochs=2",
                           "train.min_steps=0"])
    e.validate()
    (cell,) = E.cells(e)
    rows = {row["members"]: row for row in run_cell(cell, lambda rows: None) if row["split"] == "test"}
    assert sorted(rows, key=lambda m: m or 0) == [None, 1, 2, 4]
    assert rows[1]["epistemic"] == pytest.approx(0.0, abs=1e-12)  # one member cannot disagree with itself
    assert rows[4]["epistemic"] == pytest.approx(rows[None]["epistemic"])  # all four: the full ensemble

    # the same pool, refitted outside the cell (same seed), scored by the oracle
    from raysweep.cell import seed_everything
    from raysweep.models.mlp import MLP

    seed_everything(0)
    data = e.task.load(200, 0, [], e.eval.max_examples)
    options = METHODS["ensemble"].Options(members=4)
    model = MLP(**{k: v for k, v in cell["model"].items() if k != "name"})
    posterior = METHODS["ensemble"].fit(data, model, options, E.Train(**cell["train"]), 0, lambda *a: None)
    probs = posterior.predict(data.eval_sets["test"][0]).double()  # (S, B, C)
    metric = torch_uncertainty_metric("mutual_information", "MutualInformation")(reduction="mean")
    metric.update(probs[:2].transpose(0, 1))  # (B, m, C)
    assert rows[2]["epistemic"] == pytest.approx(metric.compute().item(), rel=1e-6)


def test_grid_members_beyond_what_a_method_gives_are_refused(root):
    from raysweep import experiment as E

    e = E.apply_overrides(E.load(root / "experiments" / "digits.py"),
                          ["grid.methods=ensemble,dropout", "grid.members=2,8", "methods.ensemble.members=4"])
    with pytest.raises(E.ExperimentError, match=r"grid.members \[8\] exceed the 4 members/samples method 'ensemble'"):
        e.validate()
