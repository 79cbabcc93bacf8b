"""python -m raysweep.fit RUN_DIR: refits from the store alone."""

import subprocess
import sys

import pandas as pd
from test_report import write_store

from raysweep import fit


def test_cli_refits_a_run_and_prints_the_exponent_table(tmp_path, capsys):
    write_store(tmp_path / "results")
    assert fit.main([str(tmp_path), "--holdout", "--target-eu", "0.02", "--boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "γ / exponent [interval]" in out and "report:" in out
    fits = pd.read_parquet(tmp_path / "report" / "fits.parquet")
    assert (fits.loc[fits.x_star.notna(), "target"] == 0.02).all() and "holdout_n_rel_error" in fits


def test_cli_is_deterministic(tmp_path):
    write_store(tmp_path / "results")
    fit.main([str(tmp_path), "--boot", "50"])
    first = pd.read_parquet(tmp_path / "report" / "fits.parquet")
    fit.main([str(tmp_path), "--boot", "50"])
    pd.testing.assert_frame_equal(first, pd.read_parquet(tmp_path / "report" / "fits.parquet"))


def test_two_workers_write_the_same_report_as_one(tmp_path):
    """The same fits to rounding: a forked worker may add numbers in another order than the parent
    (numpy's SIMD sums depend on where an array sits in memory), and lmfit can carry a last-bit
    difference further in a law the data do not determine; nothing a report shows moves."""
    write_store(tmp_path / "results")
    fit.main([str(tmp_path), "--holdout", "--boot", "50", "--workers", "1"])
    one = pd.read_parquet(tmp_path / "report" / "fits.parquet")
    names, text = (sorted(p.name for p in (tmp_path / "report").iterdir()),
                   (tmp_path / "report" / "report.md").read_text())
    fit.main([str(tmp_path), "--holdout", "--boot", "50", "--workers", "2"])
    pd.testing.assert_frame_equal(one, pd.read_parquet(tmp_path / "report" / "fits.parquet"), rtol=1e-6)
    assert (sorted(p.name for p in (tmp_path / "report").iterdir()) == names
            and sum(n.endswith(".png") for n in names) == 2)
    assert (tmp_path / "report" / "report.md").read_text() == text


def test_cli_without_a_store_says_what_it_expected(tmp_path, capsys):
    assert fit.main([str(tmp_path)]) == 2
    assert f"no results store in {tmp_path}" in capsys.readouterr().err


def test_cli_refuses_a_non_positive_target():
    result = subprocess.run([sys.executable, "-m", "raysweep.fit", ".", "--target-eu", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--target-eu must be > 0 nats, got 0.0" in result.stderr
