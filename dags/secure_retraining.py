"""secure_retraining: the secure training workflow weekly, and whenever a new sealed dataset version lands.

Data-aware: ``data_onboarding`` updates the dataset's Asset when it publishes a version; this DAG then
trains on the latest version. It also runs on Sundays at 02:00 UTC.
"""

from __future__ import annotations

import pendulum

from airflow.sdk import DAG
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable
from operators.assets import sealed_dataset_asset
from operators.pipeline import DEFAULT_ARGS, secure_training_from_params, training_params

with DAG(
    dag_id="secure_retraining",
    description="Scheduled and data-aware retraining on the latest sealed dataset version",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * 0", timezone="UTC"),
        assets=sealed_dataset_asset("breast-cancer"),
    ),
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
