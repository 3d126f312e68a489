"""What Airflow's plugin manager loads from ``plugins/``: securetrain's plugin, defined in securetrain.airflow.plugin."""

from securetrain.airflow.plugin import SecuretrainPlugin

__all__ = ["SecuretrainPlugin"]
