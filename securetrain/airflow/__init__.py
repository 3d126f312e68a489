"""securetrain's Airflow side: hooks (one per service), the six stage operators, sensors and triggers.

Nothing here decrypts training data or holds a private key: the operators move sealed blob names, key
ids, attestation claims and metrics, and the trainer inside the TEE does the rest.
"""

import logging

# The Azure SDK logs every request and response (headers included) at INFO; task logs want the stages.
logging.getLogger("azure").setLevel(logging.WARNING)
