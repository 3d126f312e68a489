"""The trainer agent: the HTTPS API (mutual TLS) through which Airflow runs jobs inside the TEE.

``app`` is the API, ``jobs`` the job records and the worker, ``tls`` how the client certificate reaches
the app, ``health`` and ``metrics`` what the agent reports; ``python -m securetrain.tee.agent`` runs it.
"""
