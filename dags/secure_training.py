"""secure_training: the Airflow DAG of one confidential training run, triggered by hand from the trigger form.

prepare -> check the sealed data -> attest the TEE -> train in the TEE (health watched beside it)
-> register the model -> audit -> clean up. See docs/workflow.md.
"""

from __future__ import annotations

from securetrain.airflow.pipeline import training_dag

training_dag(
    "secure_training",
    description="Confidential training on sealed data in an attested TEE",
    schedule=None,
    doc_md=__doc__,
)
