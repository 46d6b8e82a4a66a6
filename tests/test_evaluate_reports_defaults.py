"""``lungvlm evaluate-reports`` defaults: a 12-month follow-up per chest, the scanner profile in
every row and the scanner-profile table, on one tiny phantom."""

from __future__ import annotations

import json
import re

import pytest

import lungvlm.cli as cli
from data_modules.phantom import PhantomConfig, generate_case
from lungvlm.evaluation.subsets import profile_record


def test_default_follow_up_profile_and_subset_table(ckpt, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate-reports", "--ckpt", str(ckpt), "--phantom-seeds", "0:1", "--out", str(out),
            "--phantom-size", "tiny", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    data = json.loads((out / "report_eval.json").read_text())
    assert data["settings"]["follow_up_months"] == 12.0
    (row,) = data["cases"]
    assert row["case_id"] == "phantom-0-fu12m"
    assert (out / "cases" / "phantom-0-fu12m" / "report.json").is_file()
    assert row["profile"] == profile_record(
        generate_case(0, PhantomConfig.tiny()).profile.to_dict()
    )
    # A follow-up: every reference nodule has a change status; the prior step ran.
    assert all(n["status"] in ("new", "growing", "stable") for n in row["reference"]["nodules"])
    assert row["timings_s"]["prior"] > 0
    assert all("attenuation" in n for n in row["report"]["nodules"])
    subsets = data["summary"]["subsets"]
    assert subsets["all"]["n_cases"] == 1
    assert subsets["thick_low_dose"]["n_cases"] + subsets["rest"]["n_cases"] == 1
    assert subsets["all"]["seconds_per_chest"] == pytest.approx(sum(row["timings_s"].values()))
    markdown = (out / "report_eval.md").read_text()
    assert "## By scanner profile" in markdown
    assert "| seconds per chest |" in markdown


def test_follow_up_months_and_no_follow_up_exclude_each_other(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects the pair
        cli.main(["evaluate-reports", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"),
                  "--follow-up-months", "6", "--no-follow-up"])  # fmt: skip
    assert exit_info.value.code == 2
    assert re.search(r"--no-follow-up: not allowed with argument --follow-up-months",
                     capsys.readouterr().err)  # fmt: skip
