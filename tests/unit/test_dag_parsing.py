"""Every DAG parses without errors and without importing torch or Great Expectations.

How long parsing takes is a benchmark (benchmarks/dag_parsing.py), not a timed test.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.dag_parsing import REPO, parse


def test_all_dags_parse_without_errors_or_heavy_imports(tmp_path: Path) -> None:
    report = parse(REPO / "dags", tmp_path)
    assert report["errors"] == {}
    assert report["dags"] == ["access_review", "data_onboarding", "key_rotation", "retention", "secure_retraining",
                              "secure_training"]  # fmt: skip
    assert report["heavy"] == []
