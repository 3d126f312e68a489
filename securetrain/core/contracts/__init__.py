"""The contracts between the trust zones: what one zone sends another, as pydantic models both validate.

One module per concept:

- :mod:`.job_spec`: the job spec, what Airflow asks the TEE to do (``POST /v1/jobs``);
- :mod:`.training`: what the agent hands the training side and what training returns;
- :mod:`.jobs`: a job's state and its view (``GET /v1/jobs/{id}``);
- :mod:`.health`: the agent's health (``GET /v1/health``);
- :mod:`.attestation`: the agent's attestation tokens (``GET``/``POST /v1/attestation``);
- :mod:`.stages`: what each stage of the training workflow returns to Airflow (XCom).

:mod:`.base` holds what they share: the frozen, strict base model, the field types, and how a validation
error names the field at fault. The expectation suite's models live with its allow-list
(:mod:`securetrain.core.suite_policy`).
"""
