"""The fixtures of the stage operator and trigger tests, loaded by their modules as a plugin
(``pytest_plugins = ["tests.stage_fixtures"]``).

- ``airflow_env``: the environment every Airflow process of the local environment gets (``securetrain airflow
  env``): the pipeline's settings and the hooks' connections, set for a test module;
- ``other_ca_cvm_conn_id``, ``unreachable_cvm_conn_id``: confidential VM connections that fail on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from securetrain.localstack.airflow_env import airflow_environment
from securetrain.localstack.pki import LocalCA
from tests.conftest import free_ports


@pytest.fixture(scope="module")
def airflow_env(local_stack) -> Iterator[dict[str, str]]:
    """The environment of an Airflow process on the local stack, set in this process for a test module."""
    environment = airflow_environment(local_stack.state_dir)
    variables = {name: value for name, value in environment.items() if name.startswith(("SECURETRAIN_", "AIRFLOW_CONN_"))}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        yield variables


#: A confidential VM connection like the pipeline's, except that it trusts another CA than the stack's.
OTHER_CA_CVM_CONN_ID = "securetrain_cvm_other_ca"


@pytest.fixture
def other_ca_cvm_conn_id(airflow_env, tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    """:data:`OTHER_CA_CVM_CONN_ID`, defined: the agent's certificate does not verify through it."""
    connection = json.loads(airflow_env["AIRFLOW_CONN_SECURETRAIN_CVM"])
    connection["extra"]["ca_bundle"] = str(LocalCA.load_or_create(tmp_path / "other-ca").cert_path)
    monkeypatch.setenv(f"AIRFLOW_CONN_{OTHER_CA_CVM_CONN_ID.upper()}", json.dumps(connection))
    return OTHER_CA_CVM_CONN_ID


#: A confidential VM connection like the pipeline's, to a port nothing listens on: an agent not (yet) up.
UNREACHABLE_CVM_CONN_ID = "securetrain_cvm_unreachable"


@pytest.fixture
def unreachable_cvm_conn_id(airflow_env, monkeypatch: pytest.MonkeyPatch) -> str:
    """:data:`UNREACHABLE_CVM_CONN_ID`, defined."""
    connection = json.loads(airflow_env["AIRFLOW_CONN_SECURETRAIN_CVM"])
    connection["host"] = f"https://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{UNREACHABLE_CVM_CONN_ID.upper()}", json.dumps(connection))
    return UNREACHABLE_CVM_CONN_ID
