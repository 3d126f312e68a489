"""The run report rendered from a fixture run record (securetrain.core.run_report)."""

from __future__ import annotations

import base64
import re

from securetrain.core.run_report import RunRecord, render_run_report, training_curves_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RECORD = RunRecord(
    run="secure_training.manual__2026-05-01.0123456789ab",
    dag_run_id="manual__2026-05-01",
    environment={"tee": "sevsnpvm", "kek_id": "https://vault/keys/kek/1", "release_policy_sha256": "ab" * 32},
    data_check={"datasets": [{"container": "datasets", "blob": "bc/v1/<script>alert(1)</script>.sealed",
                              "plaintext_sha256": "cd" * 32, "size": 4096}]},
    training={
        "attestation": {"x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-launchmeasurement": "ef" * 48},
        "key_release": {"kek_id": "https://vault/keys/kek/1", "released_at": "2026-05-01T12:00:01Z"},
        "history": [{"epoch": 1, "step": 10, "loss": 0.7, "accuracy": 0.6},
                    {"epoch": 2, "step": 20, "loss": 0.4, "accuracy": 0.8},
                    {"epoch": 3, "step": 30, "loss": 0.2, "accuracy": 0.9}],
        "validation": {"suite": "training-data", "success": True, "rows": 569,
                       "statistics": {"evaluated_expectations": 2, "successful_expectations": 2},
                       "expectations": [{"expectation": "expect_column_values_to_not_be_null", "success": True}]},
    },
    model={"name": "bc-classifier", "version": 3, "manifest_blob": "registry/bc-classifier/3/manifest.json"},
    model_manifest={"signatures": [{"kind": "tee", "key": "ephemeral", "signature": "0f" * 32}]},
    audit={"verdict": "verified", "entries": 42, "head": "12" * 32, "summary": "42 entries verified"},
    key_events=[{"kind": "key_released", "source": "keyvault", "time": "2026-05-01T12:00:01Z",
                 "details": {"key": "kek", "identity": "tee"}}],
    alerts=[{"category": "repeated_access_denied", "severity": "critical", "count": 4, "summary": "4 denied",
             "first_seen": "2026-05-01T12:00:00Z", "last_seen": "2026-05-01T12:01:00Z", "evidence": []}],
)  # fmt: skip


def test_the_report_shows_every_section_of_a_complete_run() -> None:
    html = render_run_report(RECORD)
    for expected in ("sevsnpvm", "ab" * 32, "ef" * 48, "released_at", "training-data", "evaluated_expectations",
                     "bc-classifier", "0f" * 32, "42 entries verified", "repeated_access_denied", "manual__2026-05-01"):
        assert expected in html, expected  # fmt: skip
    assert re.search(r'id="audit-verdict"><span class="verdict-verified">verified', html)


def test_training_curves_are_an_inline_png() -> None:
    html = render_run_report(RECORD)
    (encoded,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert base64.b64decode(encoded).startswith(PNG_MAGIC)
    assert training_curves_png([]) is None
    assert training_curves_png([{"epoch": 1, "loss": float("nan")}]) is None


def test_values_are_escaped_never_markup() -> None:
    html = render_run_report(RECORD)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_failed_run_shows_what_is_missing() -> None:
    failed = RunRecord(run="r", dag_run_id="manual__x", environment=RECORD.environment,
                       audit={"verdict": "broken", "first_bad": 2, "summary": "entry 2 changed"})  # fmt: skip
    html = render_run_report(failed)
    assert "no validated attestation" in html and "no model was registered" in html
    assert "data:image/png" not in html
    assert 'class="verdict-broken"' in html and "entry 2 changed" in html


def test_a_manifest_without_signatures_says_so() -> None:
    unsigned = RunRecord(run="r", dag_run_id="d", model=RECORD.model, model_manifest={"name": "bc-classifier"})
    assert "carries no signatures" in render_run_report(unsigned)
