import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import brme_members  # noqa: E402


def test_dry_run_writes_every_arm_and_metric(tmp_path, one_thread):
    assert brme_members.main(["--dry-run", "--arms", "trl", "linear", "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert [(r["arm"], r["fold"]) for r in report["runs"]] == [("trl", 0), ("linear", 0), ("trl", 1), ("linear", 1)]
    linear = report["summary"]["arms"]["linear"]
    for key in ("accuracy_robust", "calibrated_ece", "auroc_epistemic_flags_errors", "auroc_margin_flags_errors"):
        assert linear[key]["n"] == 2, key
    assert {"off_topic", "truncated", "favourite_words"} <= set(report["summary"]["kinds"])
    assert "train_s_ratio_to_trl" in linear and "auroc_epistemic_flags_errors" not in report["summary"]["arms"]["trl"]
    # every arm saw the same pairs: the folds' test sets are the same size for both arms
    assert len({(r["fold"], r["pairs_test"], r["pairs_train"]) for r in report["runs"]}) == 2
    assert "| linear |" in (tmp_path / "results.md").read_text()


def test_arms_are_parsed_and_bad_ones_named(capsys):
    args = brme_members.parse_args(["--dry-run", "--arms", "trl", "mlp+prior", "head_type=mlp,prior_scale=2"])
    assert args.settings == [{}, {"head_type": "mlp", "prior_scale": 1.0}, {"head_type": "mlp", "prior_scale": 2}]
    assert brme_members.split_settings({"prior_scale": 2, "brme_loss": "bt"}) == (
        {"prior_scale": 2},
        {"brme_loss": "bt"},
    )
    with pytest.raises(SystemExit):
        brme_members.parse_args(["--arms", "cnn"])
    assert "unknown arm 'cnn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        brme_members.parse_args(["--arms", "heads=3"])
    assert "'heads' is no BRMERewardConfig field" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="head_type"):
        brme_members.check_supported("bad", {"head_type": "cnn"})


def test_folds_partition_the_pairs():
    splits = [brme_members.fold_splits(23, 3, f, 0.1) for f in range(3)]
    tests = [set(t) for _, _, t in splits]
    assert set().union(*tests) == set(range(23)) and sum(map(len, tests)) == 23
    for train, calibration, test in splits:
        assert not (set(train) & set(test)) and not (set(calibration) & set(test)) and calibration
        assert len(train) + len(calibration) + len(test) == 23
