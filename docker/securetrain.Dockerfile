# The image of the stand-ins (attestation, identity, keyvault), the trainer agent and the one-shot `pki`
# service: the project installed with the exact versions of constraints.txt. docker-compose.yaml chooses
# what each container runs. No key, secret or certificate is in the image: `pki` makes them into volumes
# at start-up, and secrets come from the environment.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# One malloc arena for every thread (securetrain/tee/allocator.py): glibc reads it as a process starts, and the
# trainer agent and its training workers must start with it to keep a streamed dataset within its budget.
ENV MALLOC_ARENA_MAX=1

# uid 50000, as the Airflow image's `airflow` user: the files `pki` writes into Airflow's volume (0600
# keys) are then readable by Airflow, and by no other user.
RUN groupadd --gid 50000 securetrain \
    && useradd --uid 50000 --gid 50000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin securetrain

WORKDIR /opt/securetrain
# The whole build context, less what .dockerignore keeps out (environments, the local stack's state, .env).
COPY . .
# constraints.txt pins the CPU build of torch (torch==...+cpu), published on PyTorch's own index.
RUN pip install --constraint constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu . \
    && pip check

# Mount points of the volumes, owned by the service user: a fresh named volume takes the ownership of
# the directory it is mounted on. /srv/pki/... are the `pki` service's; /srv/securetrain (a container's
# trust material, read-only) and /var/lib/securetrain (its data) every other container's.
RUN install --directory --owner=securetrain --group=securetrain --mode=0700 \
        /srv/pki/ca /srv/pki/out/azurite /srv/pki/out/attestation /srv/pki/out/identity \
        /srv/pki/out/keyvault /srv/pki/out/trainer /srv/pki/out/airflow \
        /srv/securetrain /var/lib/securetrain

USER securetrain
