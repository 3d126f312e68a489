"""secure_training: one confidential training run, triggered by hand from the UI's trigger form.

prepare -> check the sealed data -> attest the TEE -> train in the TEE (health watched beside it)
-> register the model -> audit -> clean up. See docs/airflow.md.
"""

from __future__ import annotations

import pendulum

from airflow.sdk import DAG
from operators.pipeline import DEFAULT_ARGS, secure_training_from_params, training_params

with DAG(
    dag_id="secure_training",
    description="Confidential training on sealed data in an attested TEE",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=training_params(dataset_version="latest"),
    render_template_as_native_obj=True,
    tags=["securetrain"],
    doc_md=__doc__,
):
    secure_training_from_params()
