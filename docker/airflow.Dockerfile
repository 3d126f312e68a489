# Airflow for securetrain: the official image of the Airflow version constraints.txt pins, with the project
# (hooks, operators, the core they call) installed beside it with the same constraints, and the DAGs and
# plugins in Airflow's folders. Nothing secret is in the image: docker-compose.yaml passes secrets and the
# connections through the environment.
FROM apache/airflow:3.3.2-python3.11

# Trust material (CA certificate, Airflow's client certificate and identities) is mounted here read-only.
USER root
RUN install --directory --owner=airflow --group=0 --mode=0700 /srv/securetrain
USER airflow

# The whole build context, less what .dockerignore keeps out (environments, the local stack's state, .env).
COPY --chown=airflow:0 . /opt/securetrain
# The Airflow extras this deployment uses are named so that pip resolves them together with the project
# under constraints.txt: a conflict fails the build instead of breaking a provider at run time.
# constraints.txt pins the CPU build of torch (torch==...+cpu), published on PyTorch's own index.
RUN pip install --no-cache-dir --constraint /opt/securetrain/constraints.txt \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        "apache-airflow[celery,fab,postgres,redis]==3.3.2" /opt/securetrain \
    && pip check

# The DAGs and the plugin straight from the project's folders.
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/securetrain/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/securetrain/plugins
