"""The secure training workflow as Airflow tasks: built once here, used by every training DAG.

Stages, in order (see ARCHITECTURE.md)::

    prepare_environment >> check_data_security >> attestation_status >> train >> register_model
                                                                   \\>> enclave_health
    [register_model, enclave_health] >> audit >> cleanup;  every task >> run_verdict

``audit`` and ``cleanup`` run whatever happened before them (``all_done``); ``run_verdict`` fails the DAG
run when any stage failed (otherwise the successful cleanup, the last task, would make the run succeed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import TriggerRule, task
from airflow.sdk.exceptions import AirflowFailException
from securetrain.airflow.audit import AuditOperator
from securetrain.airflow.cleanup import CleanupOperator
from securetrain.airflow.dag_tags import SECURETRAIN_TAG, TRAINING_TAG
from securetrain.airflow.data_security import DataSecurityCheckOperator
from securetrain.airflow.environment import EnvironmentPreparationOperator
from securetrain.airflow.failures import RETRY_ARGS
from securetrain.airflow.model_management import ModelManagementOperator
from securetrain.airflow.notifiers import default_notifiers
from securetrain.airflow.sensors import AttestationStatusSensor, EnclaveHealthSensor
from securetrain.airflow.training import AttestedTrainingOperator

#: Default arguments of every securetrain DAG. A failed task raises an alert (log line, webhook).
DEFAULT_ARGS: dict[str, Any] = {"owner": "securetrain", "on_failure_callback": default_notifiers(), **RETRY_ARGS}


def securetrain_dag(dag_id: str, *, tags: list[str], queue: str | None = None, **dag_args: Any) -> Any:
    """A DAG with what every securetrain DAG shares: :data:`DEFAULT_ARGS` (tasks on ``queue`` when given), no
    catch-up from its fixed start date, and the ``securetrain`` tag before ``tags``."""
    import pendulum  # noqa: PLC0415

    from airflow.sdk import DAG  # noqa: PLC0415

    return DAG(
        dag_id=dag_id,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        default_args={**DEFAULT_ARGS, "queue": queue} if queue else DEFAULT_ARGS,
        tags=[SECURETRAIN_TAG, *tags],
        **dag_args,
    )


@task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
def run_verdict() -> None:
    """Runs only when a stage failed, and fails: the DAG run's state then says the run failed."""
    raise AirflowFailException("a stage of this run failed; see its log (audit and cleanup ran regardless)")


def _from_stage(task_id: str, field: str) -> str:
    """A template for one field of a stage's result (rendered as a native value: the DAGs set that)."""
    return f"{{{{ ti.xcom_pull(task_ids='{task_id}')['{field}'] }}}}"


def _from_stage_if_any(task_id: str, field: str) -> str:
    """A template for a field a stage's result may leave out (``Omittable``): the value, or None."""
    return f"{{{{ ti.xcom_pull(task_ids='{task_id}').get('{field}') }}}}"


def secure_training_tasks(
    *,
    dataset_id: str,
    dataset_version: str,
    model: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    columns: Mapping[str, Any],
    expectation_suite: Any,
    model_name: str,
    release_policy_path: str | None = None,
    contract: str | None = None,
    privacy: Any = None,
) -> dict[str, Any]:
    """Add the workflow's tasks to the DAG being defined; arguments may be Jinja templates (``params``).

    ``contract`` (a contract's digest) runs under that signed contract: its datasets and their owners' KEKs
    instead of ``dataset_id``/``dataset_version`` and the deployment's KEK (docs/workflow.md). ``privacy``
    (``{epsilon, delta, max_grad_norm, accountant}``) trains with DP-SGD.
    """
    prepare = EnvironmentPreparationOperator(
        task_id="prepare_environment", release_policy_path=release_policy_path, contract=contract
    )
    kek_id = _from_stage(prepare.task_id, "kek_id")
    check = DataSecurityCheckOperator(
        task_id="check_data_security", dataset_id=dataset_id, version=dataset_version, kek_id=kek_id,
        release_policy_sha256=_from_stage(prepare.task_id, "release_policy_sha256"),
        contract=_from_stage_if_any(prepare.task_id, "contract"),
    )  # fmt: skip
    attestation = AttestationStatusSensor(task_id="attestation_status", kek_id=kek_id, contract=contract)
    train = AttestedTrainingOperator(
        task_id="train", kek_id=kek_id, datasets=_from_stage(check.task_id, "job_datasets"), model=model,
        hyperparameters=hyperparameters, columns=columns, expectation_suite=expectation_suite, contract=contract,
        privacy=privacy,
    )  # fmt: skip
    # Beside training. In reschedule mode (the default unless [operators] default_deferrable is on) it
    # also interleaves with the deferred training task under `airflow dags test`, which runs one at a time.
    health = EnclaveHealthSensor(task_id="enclave_health", expected_tee=_from_stage(prepare.task_id, "tee"))
    register = ModelManagementOperator(
        task_id="register_model", model_name=model_name, training=train.output, data=check.output,
        environment=prepare.output, hyperparameters=hyperparameters,
    )  # fmt: skip
    audit = AuditOperator(task_id="audit", trigger_rule=TriggerRule.ALL_DONE)
    cleanup = CleanupOperator(task_id="cleanup")
    prepare >> check >> attestation >> [train, health]
    [register, health] >> audit >> cleanup
    stages = [prepare, check, attestation, train, health, register, audit, cleanup]
    stages >> run_verdict()
    return {task.task_id: task for task in stages}


#: The expectation suite a run uses unless the trigger form gives another: labels present and binary.
DEFAULT_SUITE: dict[str, Any] = {
    "name": "training-data",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "label"}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}},
    ],
}


def training_params(*, dataset_version: str) -> dict[str, Any]:
    """The trigger form of a training DAG: each field a ``Param`` with a JSON schema the UI validates."""
    from airflow.sdk import Param  # noqa: PLC0415

    return {
        # null, not "": the trigger form sends an emptied text field as null.
        "contract": Param(None, type=["null", "string"], pattern=r"^[0-9a-f]{64}$", title="Contract",
                          description="The digest of a signed contract (container 'contracts') to train under: its "
                                      "datasets at their pinned versions and the first dataset's KEK. Empty: no "
                                      "contract, the dataset below and the deployment's KEK"),
        "dataset_id": Param("breast-cancer", type="string", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", title="Dataset",
                            description="Sealed dataset id (onboarded by data_onboarding); ignored under a contract"),
        "dataset_version": Param(dataset_version, type="string", pattern=r"^(latest|[A-Za-z0-9._-]{1,64})$",
                                 title="Dataset version",
                                 description="A version, or 'latest'; ignored under a contract (it pins versions)"),
        "model": Param("mlp", enum=["mlp", "cnn"], title="Model", description="Model from the trainer's registry"),
        "model_params": Param({"hidden": [32, 16]}, type="object", title="Model parameters"),
        "epochs": Param(5, type="integer", minimum=1, maximum=1000, title="Epochs"),
        "batch_size": Param(32, type="integer", minimum=1, maximum=65536, title="Batch size"),
        "learning_rate": Param(0.01, type="number", exclusiveMinimum=0, maximum=10, title="Learning rate"),
        "seed": Param(7, type="integer", minimum=0, maximum=4294967295, title="Seed"),
        "label_column": Param("label", type="string", title="Label column"),
        "expectation_suite": Param(DEFAULT_SUITE, type="object", title="Expectation suite",
                                   description="Great Expectations suite run inside the TEE before training"),
        "model_name": Param("breast-cancer-classifier", type="string", pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
                            title="Registered model name"),
        # null, not "": the trigger form sends an emptied text field as null.
        "release_policy": Param(None, type=["null", "string"], title="Approved release policy (JSON file)",
                                description="Empty: the deployment's approved policy ($SECURETRAIN_RELEASE_POLICY); "
                                            "not used under a contract (each KEK must carry the contract's policy)"),
        "dp_epsilon": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=100,
                            title="Differential privacy: ε",
                            description="Train with DP-SGD spending at most this ε; empty: no differential privacy"),
        "dp_delta": Param(1e-5, type="number", exclusiveMinimum=0, exclusiveMaximum=1, title="Differential privacy: δ"),
        "dp_max_grad_norm": Param(1.0, type="number", exclusiveMinimum=0, maximum=1000,
                                  title="Differential privacy: clipping norm",
                                  description="Each sample's gradient is clipped to this L2 norm"),
        "dp_accountant": Param("prv", enum=["prv", "rdp"], title="Differential privacy: accountant",
                               description="How the ε spent is computed (Opacus's PRV or RDP accountant)"),
    }  # fmt: skip


def training_dag(dag_id: str, *, description: str, schedule: Any, doc_md: str | None) -> Any:
    """A DAG running the secure training workflow with the trigger form of :func:`training_params`.

    It is tagged :data:`~securetrain.airflow.dag_tags.TRAINING_TAG`: the "Secure training" page lists its runs. A
    DAG built with :func:`secure_training_tasks` directly carries that tag to be listed there too.
    """
    with securetrain_dag(
        dag_id,
        description=description,
        schedule=schedule,
        max_active_runs=1,
        params=training_params(dataset_version="latest"),
        # Params keep their JSON types in the job spec (an integer stays an integer).
        render_template_as_native_obj=True,
        # TRAINING_TAG puts its runs on the "Secure training" page (securetrain/airflow/plugin.py).
        tags=[TRAINING_TAG],
        doc_md=doc_md,
    ) as dag:
        secure_training_from_params()
    return dag


def secure_training_from_params() -> dict[str, Any]:
    """:func:`secure_training_tasks` with every argument taken from the run's ``params``."""
    return secure_training_tasks(
        dataset_id="{{ params.dataset_id }}",
        dataset_version="{{ params.dataset_version }}",
        model={"name": "{{ params.model }}", "params": "{{ params.model_params }}"},
        hyperparameters={"epochs": "{{ params.epochs }}", "batch_size": "{{ params.batch_size }}",
                         "learning_rate": "{{ params.learning_rate }}", "seed": "{{ params.seed }}"},
        columns={"label": "{{ params.label_column }}"},
        expectation_suite="{{ params.expectation_suite }}",
        model_name="{{ params.model_name }}",
        release_policy_path="{{ params.release_policy or None }}",
        contract="{{ params.contract or None }}",
        privacy=PRIVACY_FROM_PARAMS,
    )  # fmt: skip


#: The job's privacy request from the trigger form: None without an ε (no DP), else every DP field.
PRIVACY_FROM_PARAMS = (
    "{{ {'epsilon': params.dp_epsilon, 'delta': params.dp_delta, 'max_grad_norm': params.dp_max_grad_norm, "
    "'accountant': params.dp_accountant} if params.dp_epsilon is not none else None }}"
)
