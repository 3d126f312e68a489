"""The run report: one self-contained HTML page per training run, for a person reviewing what the run did
and proved (what it shows: docs/monitoring.md, "The run report").

The ``audit`` task builds a :class:`RunRecord` from the stages' results and writes the page
(:func:`write_run_report`). Everything rendered is escaped (Jinja2 ``autoescape``); the only markup not from
the template is the training curves' PNG, which this module drew, base64-encoded.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from securetrain.core.alerts import Alert
from securetrain.core.audit.events import AuditEvent, EventKind
from securetrain.core.errors import SecuretrainError
from securetrain.core.storage import BlobStore

logger = logging.getLogger(__name__)

#: The report's blob in the reports container, per run.
REPORT_BLOB = "{run}/report.html"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _number(value: Any) -> Any:
    """Floats to 4 decimals (metrics), everything else as it is."""
    return f"{value:.4f}" if isinstance(value, float) else value


_templates.filters["number"] = _number


@dataclass(frozen=True)
class RunRecord:
    """What one run established, as its stages returned it (JSON objects; an absent stage is empty).

    ``environment``: ``prepare_environment``'s result; ``data_check``: ``check_data_security``'s;
    ``training``: ``train``'s (``attestation`` claims, ``key_release``, ``history``, ``validation``, ...);
    ``model``: ``register_model``'s; ``model_manifest``: the registry's manifest of that version, whose
    ``signatures`` field (if present) is listed; ``audit``: the audit verdict (``verdict``, ``entries``,
    ``head``, ``summary``, ``first_bad``); ``key_events``: the run's ``key_released`` / ``key_denied``
    audit events as JSON; ``alerts``: the alerts raised, as JSON.
    """

    run: str
    dag_run_id: str
    environment: Mapping[str, Any] = field(default_factory=dict)
    data_check: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    model_manifest: Mapping[str, Any] = field(default_factory=dict)
    audit: Mapping[str, Any] = field(default_factory=dict)
    key_events: Sequence[Mapping[str, Any]] = ()
    alerts: Sequence[Mapping[str, Any]] = ()


def _curves(history: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per metric, its (epoch, value) points; values that are not finite numbers are left out."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for entry in history:
        epoch = entry.get("epoch")
        if not isinstance(epoch, int | float) or isinstance(epoch, bool):
            continue
        for name, value in entry.items():
            if name in ("epoch", "step") or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                curves.setdefault(name, []).append((float(epoch), float(value)))
    return curves


def training_curves_png(history: Sequence[Mapping[str, Any]]) -> bytes | None:
    """The per-epoch metrics of ``history`` plotted as a PNG, one line per metric; None if nothing to plot."""
    curves = _curves(history)
    if not curves:
        return None
    # Imported here: matplotlib is slow to import and only the report needs it. The Agg canvas draws
    # without a display, and a Figure made directly (not through pyplot) holds no global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    figure = Figure(figsize=(7, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name in sorted(curves):
        points = curves[name]
        axes.plot([epoch for epoch, _ in points], [value for _, value in points], marker="o", label=name)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("value")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def render_run_report(record: RunRecord) -> str:
    """The report of ``record`` as a complete HTML document."""
    training = record.training
    history = training.get("history") if isinstance(training.get("history"), list) else []
    png = training_curves_png([entry for entry in history if isinstance(entry, dict)])
    curves_uri = f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}" if png else None
    signatures = record.model_manifest.get("signatures")
    return _templates.get_template("run_report.html").render(
        record=record,
        claims=_mapping(training.get("attestation")),
        key_release=_mapping(training.get("key_release")),
        validation=_mapping(training.get("validation")),
        history=[entry for entry in history if isinstance(entry, dict)],
        curves_uri=curves_uri,
        datasets=[item for item in record.data_check.get("datasets") or [] if isinstance(item, dict)],
        signatures=signatures if isinstance(signatures, list | dict) else None,
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _read_manifest(store: BlobStore, manifest_blob: object) -> Mapping[str, Any]:
    """The registry manifest ``container/blob``, or empty (logged) when it cannot be read: the report shows
    what exists; ``securetrain models verify`` is the check that a manifest is right."""
    if not isinstance(manifest_blob, str) or "/" not in manifest_blob:
        return {}
    container, blob = manifest_blob.split("/", 1)
    try:
        buffer = io.BytesIO()
        store.download_to(container, blob, buffer)
        manifest = json.loads(buffer.getvalue())
    except (SecuretrainError, ValueError) as exc:
        logger.warning("run report: model manifest %s not shown: %s", manifest_blob, exc)
        return {}
    return _mapping(manifest)


def run_record(
    store: BlobStore,
    *,
    run: str,
    dag_run_id: str,
    results: Mapping[str, Mapping[str, Any] | None],
    audit: Mapping[str, Any],
    events: Sequence[AuditEvent],
    alerts: Sequence[Alert],
) -> RunRecord:
    """The :class:`RunRecord` of a run from its stages' ``results`` (task id -> return value), its audit
    verdict, its audit events and alerts; the model manifest is read from ``store``."""
    model = _mapping(results.get("register_model"))
    key_kinds = (EventKind.KEY_RELEASED, EventKind.KEY_DENIED)
    return RunRecord(
        run=run,
        dag_run_id=dag_run_id,
        environment=_mapping(results.get("prepare_environment")),
        data_check=_mapping(results.get("check_data_security")),
        training=_mapping(results.get("train")),
        model=model,
        model_manifest=_read_manifest(store, model.get("manifest_blob")),
        audit=dict(audit),
        key_events=[event.to_json() for event in events if event.kind in key_kinds],
        alerts=[alert.to_json() for alert in alerts],
    )


def write_run_report(store: BlobStore, container: str, record: RunRecord) -> str:
    """Render the report of ``record`` and upload it (replacing an older one); its ``container/blob`` name."""
    body = render_run_report(record).encode("utf-8")
    blob = REPORT_BLOB.format(run=record.run)
    store.upload_stream(container, blob, io.BytesIO(body), length=len(body), overwrite=True)
    logger.info("run report: %s/%s (%d bytes)", container, blob, len(body))
    return f"{container}/{blob}"
