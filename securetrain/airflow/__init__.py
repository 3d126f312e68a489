"""securetrain's Airflow side: hooks (one per service), the six stage operators, sensors and triggers.

Nothing here decrypts training data or holds a private key: the operators move sealed blob names, key
ids, attestation claims and metrics, and the trainer inside the TEE does the rest.
"""

from securetrain.core.process_logging import quiet_libraries

# Airflow configures the task logs' handlers; what the tasks log should be the stages, not the libraries' requests.
quiet_libraries()
