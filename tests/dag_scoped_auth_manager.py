"""An auth manager that grants some users some DAGs only, for the tests of per-DAG authorization.

Airflow's SimpleAuthManager grants by role alone; deployments grant per DAG with FAB's or Keycloak's auth
manager. This is SimpleAuthManager, except that a user named in :data:`DAG_GRANTS` may reach only the DAGs
listed for it (whatever the entity: runs, task instances, XComs), as a per-DAG permission would say.
Configured like any auth manager: ``AIRFLOW__CORE__AUTH_MANAGER=tests.dag_scoped_auth_manager.DagScopedAuthManager``.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

#: user name -> the only DAG ids that user may reach.
DAG_GRANTS: dict[str, frozenset[str]] = {"analyst": frozenset({"secure_retraining"})}


class DagScopedAuthManager(SimpleAuthManager):
    """SimpleAuthManager with :data:`DAG_GRANTS` applied to every DAG authorization."""

    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        granted = DAG_GRANTS.get(user.get_name())
        if granted is not None and (details is None or details.id not in granted):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
