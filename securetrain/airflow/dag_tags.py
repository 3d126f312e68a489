"""The DAG tags securetrain reads: which DAGs are its own, and which of those train.

Plain names in a module of their own, so that the plugin and the listener (loaded by every Airflow
process) know them without importing the operators.
"""

from __future__ import annotations

#: Every securetrain DAG carries it; the audit-trail listener records the state changes of these DAGs only.
SECURETRAIN_TAG = "securetrain"
#: The DAGs that run the secure training workflow (:func:`securetrain.airflow.pipeline.training_dag` sets it):
#: the "Secure training" page lists their runs.
TRAINING_TAG = "securetrain-training"
