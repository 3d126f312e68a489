"""secure_retraining: the secure training workflow weekly, and whenever a new sealed dataset version lands.

Data-aware: ``data_onboarding`` updates the dataset's Asset when it publishes a version; this DAG then
trains on the latest version. It also runs on Sundays at 02:00 UTC.
"""

from __future__ import annotations

from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable
from securetrain.airflow.assets import sealed_dataset_asset
from securetrain.airflow.pipeline import training_dag

training_dag(
    "secure_retraining",
    description="Scheduled and data-aware retraining on the latest sealed dataset version",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * 0", timezone="UTC"),
        assets=sealed_dataset_asset("breast-cancer"),
    ),
    doc_md=__doc__,
)
