"""The sub-ensemble section: EU(m) against (m-1)/m. Ground truth both ways: synthetic EU(m) that follow,
saturate or outgrow the law (known EU_∞), and the real plug-in MI of m draws from Dirichlet and
logit-normal populations, which is where the (m-1)/m reference line comes from."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import digamma

from raysweep import report, store
from raysweep import uncertainty as U
from raysweep.report import members

MS = (1, 2, 4, 8, 16)  # m = 1 (EU = 0 by construction) is in the grid and must not sway the fit


def frame(curve, seeds=3, noise=0.03, ms=MS, seed=0) -> tuple[pd.DataFrame, dict]:
    """grid.members rows of one method at two sizes and two N: EU(m) = curve(m, EU_∞) with log-normal
    seed noise; returns the rows and the true EU_∞ per (size, n)."""
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for size in (8, 32):
        for n in (100, 400):
            truth[size, n] = eu_inf = 0.05 * (n / 100) ** -0.5 * (size / 8) ** -0.2
            for s in range(seeds):
                for m in ms:
                    eu = 0.0 if m == 1 else curve(m, eu_inf) * np.exp(rng.normal(0, noise))
                    rows.append({"cell_id": f"{size}-{n}-{s}", "task": "toy", "method": "ensemble", "model": "mlp",
                                 "size": size, "n": n, "seed": s, "split": "test", "members": m, "status": "ok",
                                 "epistemic": eu})
    return pd.DataFrame(rows), truth


def law(m, eu_inf):
    return eu_inf * (m - 1) / m


def test_eu_following_the_law_gives_back_its_eu_inf_and_follows():
    rows, truth = frame(law)
    diagnoses, points = members.table(rows)
    assert len(diagnoses) == 4 and (diagnoses["verdict"] == "follows").all()
    error = np.array([r.eu_inf / truth[r.size, r.n] - 1 for r in diagnoses.itertuples()])
    assert np.abs(error).max() < 0.03  # 3% noise on 12 points a group: about 1% standard error
    assert np.allclose(diagnoses["kappa"], 1, atol=0.1) and (diagnoses["kappa_lo"] < diagnoses["kappa_hi"]).all()
    assert np.allclose(diagnoses["captured"], 15 / 16, atol=0.03) and np.allclose(diagnoses["expected"], 15 / 16)
    assert (diagnoses["m"] == "2, 4, 8, 16").all() and (diagnoses["seeds"] == 3).all()
    assert len(points) == 4 * 3 * 4 and np.allclose(points["scaled"], points["x"], rtol=0.1)


def test_saturating_eu_is_flagged_as_flattening_early_and_growing_eu_as_growing_faster():
    flat, _ = frame(lambda m, eu_inf: eu_inf)  # EU(m) constant: the members add nothing after the second
    diagnoses, _ = members.table(flat)
    assert (diagnoses["verdict"] == "flattens early").all() and (diagnoses["kappa"].abs() < 0.2).all()
    assert (diagnoses["captured"] < 0.85).all()  # the (m-1)/m fit overstates a saturated EU_∞
    growing, _ = frame(lambda m, eu_inf: eu_inf * np.log(m))  # one-hot members: EU = H(draws) ~ log m
    assert (members.table(growing)[0]["verdict"] == "grows faster").all()


def test_one_seed_has_no_interval_and_the_verdict_uses_the_point():
    diagnoses, _ = members.table(frame(lambda m, eu_inf: eu_inf, seeds=1)[0])
    assert diagnoses["kappa_lo"].isna().all() and (diagnoses["note"] == "one seed: no interval").all()
    assert (diagnoses["verdict"] == "flattens early").all()


def test_the_verdict_departs_only_when_the_whole_interval_is_outside_the_tolerance():
    assert members.verdict(0.7, 0.5, 0.85) == "follows"  # the interval reaches 1 - 0.2
    assert members.verdict(0.7, 0.5, 0.78) == "flattens early"
    assert members.verdict(1.3, 1.21, 1.4) == "grows faster"
    assert members.verdict(1.3, float("nan"), float("nan")) == "grows faster"


def write_members_store(results, ms=MS):
    """Two learning rates of one method (merged configurations) with EU_∞ 0.02 and 0.06, and their
    all-members rows: the section must fit each configuration on its own."""
    rng = np.random.default_rng(4)
    for lr, eu_inf in ((0.001, 0.02), (0.01, 0.06)):
        config = {"method": "ensemble", "train": {"lr": lr}, "method_options": {"members": 16}}
        for n in (100, 200, 400):
            for seed in range(3):
                base = {"cell_id": f"{lr}-{n}-{seed}", "attempt": "0", "task": "toy", "model": "mlp", "size": 8,
                        "size_knob": "width", "params": 800, "n": n, "method": "ensemble", "seed": seed,
                        "split": "test", "kind": "final", "status": "ok", "variant": store.variant(config),
                        "config": json.dumps(config | {"n": n, "seed": seed}), "samples": 16}
                eu = eu_inf * (n / 100) ** -0.5
                rows = [base | {"epistemic": eu * 15 / 16, "total": 1.0}]
                rows += [base | {"members": m, "epistemic": eu * (m - 1) / m * np.exp(rng.normal(0, 0.03)),
                                 "total": 1.0} for m in ms]
                store.write_cell(results, rows)


def test_the_report_has_the_section_per_configuration_with_its_figure_and_csv(tmp_path):
    write_members_store(tmp_path / "results")
    text = report.write(tmp_path / "results", tmp_path / "report", n_boot=0).read_text()
    assert text.index("## Summary") < text.index("## Sub-ensembles: EU(m) against (m-1)/m") < text.index("## Fitting")
    assert "6 of 6 groups fitted: 6 follows." in text and "![members](members_eu.png)" in text
    assert (tmp_path / "report" / "members_eu.png").stat().st_size > 10_000
    diagnoses = pd.read_csv(tmp_path / "report" / "members.csv")
    for method, eu_inf in (("ensemble (train.lr=0.001)", 0.02), ("ensemble (train.lr=0.01)", 0.06)):
        mine = diagnoses[diagnoses.method == method].sort_values("n")
        assert np.allclose(mine["eu_inf"], eu_inf * (mine["n"] / 100) ** -0.5, rtol=0.03)


def test_too_few_sub_ensemble_sizes_say_why_there_is_no_fit_and_no_rows_no_section(tmp_path):
    write_members_store(tmp_path / "results", ms=(1, 4, 8))
    text = report.write(tmp_path / "results", tmp_path / "report", n_boot=0, plots=False).read_text()
    assert "Not fitted: needs EU at 3 or more distinct m >= 2 (m = 4, 8)." in text
    rows, _ = frame(law)
    assert members.section(rows.assign(members=None), tmp_path) == []


# ---------------------------------------------------------------- the law from real plug-in MI

def plug_in_eu(draws: np.ndarray, ms) -> np.ndarray:
    """Mean over replicates of the plug-in MI (raysweep.uncertainty) of the first m of each replicate's draws."""
    return np.array([U.decompose(draws[:, :m].swapaxes(0, 1))["epistemic"].mean() for m in ms])  # (m, R, C)


def dirichlet_eu_inf(alpha: np.ndarray) -> float:
    """MI of p ~ Dir(α): H[E p] - E H[p], with E H[p] = ψ(α0 + 1) - Σ (α_c/α0) ψ(α_c + 1)."""
    a0, mean = alpha.sum(), alpha / alpha.sum()
    return float(-(mean * np.log(mean)).sum() - digamma(a0 + 1) + (mean * digamma(alpha + 1)).sum())


def shape(ms, eu) -> float:
    return members._shape(np.asarray(ms, float), eu)


@pytest.mark.parametrize("population", ["dirichlet", "logit-normal"])
def test_plug_in_mi_of_m_iid_draws_is_eu_inf_times_m_minus_1_over_m_for_small_spreads(population):
    """E[EU(m)] / EU_∞ against (m-1)/m: within 1.5% for every m when EU_∞ is about 0.02 nats, and
    the second-order departure grows faster (κ > 1) yet stays within the tolerance up to EU_∞ = 0.5 nats."""
    rng = np.random.default_rng(5)
    ms = np.array([2, 4, 8, 16, 32])
    classes, replicates = 10, 8000
    centre = rng.dirichlet(2 * np.ones(classes))
    for spread in ("small", "large"):
        if population == "dirichlet":
            alpha = centre * (200 if spread == "small" else 6)
            draws = rng.dirichlet(alpha, size=(replicates, ms[-1]))  # (R, M, C)
            eu_inf = dirichlet_eu_inf(alpha)
        else:
            sd = 0.2 if spread == "small" else 1.2
            logits = np.log(centre) + sd * rng.normal(size=(replicates * ms[-1] + 200_000, classes))
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            draws, population_sample = p[: replicates * ms[-1]].reshape(replicates, ms[-1], classes), p
            eu_inf = float(U.decompose(population_sample[:, None])["epistemic"][0])  # 200k+ draws: the limit
        eu = plug_in_eu(draws, ms)
        ratio = eu / (eu_inf * (ms - 1) / ms)
        kappa = shape(ms, eu)
        if spread == "small":
            assert 0.01 < eu_inf < 0.03 and np.abs(ratio - 1).max() < 0.015, (eu_inf, ratio)
            assert abs(kappa - 1) < 0.05
        else:
            assert 0.3 < eu_inf < 0.55 and 1 < kappa < 1 + members.TOLERANCE, (eu_inf, kappa)
            assert (ratio < 1).all()  # the first-order law overstates small ensembles: the direction of κ > 1


def test_the_diagnostic_recovers_the_exact_eu_inf_from_nested_plug_in_sub_ensembles():
    """Three 'seeds', each a pool of 16 Dirichlet draws for each of 300 inputs (each input its own
    population): EU(m) of the pool's first m members, averaged over the inputs as evaluate does. The
    diagnostic must follow and give back the exact mean MI."""
    rng = np.random.default_rng(6)
    inputs, classes, ms = 300, 10, (2, 4, 8, 16)
    alphas = rng.dirichlet(2 * np.ones(classes), size=inputs) * rng.uniform(30, 300, size=(inputs, 1))
    exact = np.mean([dirichlet_eu_inf(a) for a in alphas])
    rows = []
    for seed in range(3):
        pool = np.stack([rng.dirichlet(a, size=16) for a in alphas], axis=1)  # (16, inputs, C)
        rows += [{"cell_id": f"c{seed}", "task": "toy", "method": "ensemble", "model": "mlp", "size": 8, "n": 100,
                  "seed": seed, "split": "test", "members": m, "status": "ok",
                  "epistemic": float(U.decompose(pool[:m])["epistemic"].mean())} for m in ms]
    (diagnosis,) = members.table(pd.DataFrame(rows))[0].to_dict("records")
    assert diagnosis["verdict"] == "follows" and abs(diagnosis["kappa"] - 1) < members.TOLERANCE
    assert diagnosis["eu_inf"] == pytest.approx(exact, rel=0.03)
    assert diagnosis["eu_inf_lo"] < exact < diagnosis["eu_inf_hi"]
