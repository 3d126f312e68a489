"""One hook per service; each owns its client and reads its Airflow connection."""
