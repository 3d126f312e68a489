"""``securetrain demo``: the deepest real path that exists, end to end on the local stack, narrated.

1. the local stack comes up: Azurite, the attestation service, identities, the Key Vault stand-in and
   the local confidential VM, all over HTTPS under the stack's CA;
2. the data owner fetches the KEK's *public* key from Key Vault (as the pipeline identity) and seals a
   dataset that ships inside scikit-learn, binding its dataset id and classification;
3. the sealed file is streamed to blob storage; what storage holds is checked to be ciphertext;
4. the TEE's path: an ephemeral key in memory, simulated SEV-SNP evidence binding it and a nonce, a
   token from the attestation service, Secure Key Release of the KEK wrapped to that key;
5. the TEE streams the blob back and opens it in memory: every segment authenticates and the
   plaintext digest equals the data owner's.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
from pathlib import Path

from azure.keyvault.keys import KeyVaultKeyIdentifier

from securetrain.datasets import bundled_table, to_parquet
from securetrain.errors import SecurityViolation
from securetrain.keyvault import kek_public_key, key_client_from_stack_env
from securetrain.onboarding import seal_and_upload
from securetrain.sealed import SealedReader, inspect
from securetrain.stack import StackConfig, up
from securetrain.storage import BlobStore
from trainer.attest import TeeKey
from trainer.evidence import SimulatedSnpProvider
from trainer.tee_services import attester_from_env, releaser_from_env

log = logging.getLogger(__name__)

DATASET = "breast-cancer"
CONTAINER = "datasets"
BLOB = f"{DATASET}/v1/shard-00000.parquet.sealed"


def _step(number: int, text: str) -> None:
    print(f"[{number}] {text}", flush=True)


def run(state_dir: Path | None = None) -> dict[str, object]:
    config = StackConfig.resolve(state_dir)
    _step(1, f"bringing up the local stack in {config.layout.root}")
    env = up(config)
    print(f"    blob storage: {env['SECURETRAIN_BLOB_ENDPOINT']} (TLS verified with {env['SECURETRAIN_CA_BUNDLE']})")

    kek_ref = KeyVaultKeyIdentifier(env["SECURETRAIN_KEK_ID"])
    with key_client_from_stack_env(env, "pipeline") as keys:
        kek = kek_public_key(keys.get_key(kek_ref.name, kek_ref.version))
    table = bundled_table(DATASET)
    plaintext = to_parquet(table)
    _step(2, f"data owner: sealing {DATASET} ({table.num_rows} rows, {len(plaintext)} bytes of Parquet) "
             f"for KEK {kek.kek_id}")
    with BlobStore.from_stack_env(env) as store:
        shard = seal_and_upload(plaintext, kek=kek, store=store, container=CONTAINER, blob=BLOB, file_format="parquet",
                                context={"dataset_id": DATASET, "classification": "phi-demo"}, overwrite=True)
        digest = shard.plaintext_sha256
        _step(3, f"uploaded {CONTAINER}/{BLOB} ({shard.sealed_bytes} bytes) to Azurite over HTTPS")
        with store.open_read(CONTAINER, BLOB) as blob:
            stored = blob.read()
        if plaintext[:64] in stored or plaintext[-64:] in stored:
            raise SecurityViolation("storage holds plaintext: the demo found Parquet bytes in the blob")
        header = inspect(io.BytesIO(stored))
        print(f"    plaintext SHA-256 {digest[:16]}…, {header.content.layout.segment_count} segment(s), "
              f"data key wrapped {header.key.algorithm} to KEK thumbprint {header.key.kek_thumbprint[:16]}…")
        print(f"    storage holds ciphertext only; header readable without a key: context {dict(header.content.context)}")

        _step(4, "TEE: attesting an ephemeral key on the simulated SEV-SNP platform, then Secure Key Release")
        attester = attester_from_env(env, SimulatedSnpProvider(Path(env["SECURETRAIN_SNP_PLATFORM_DIR"])))
        tee_key = TeeKey()
        token = attester.attest(tee_key, secrets.token_hex(16))
        claims = token.claims
        print(f"    token from {env['SECURETRAIN_ATTESTATION_ENDPOINT']}: platform {claims['x-securetrain-platform']}, "
              f"HOST_DATA {claims['x-ms-sevsnpvm-hostdata'][:16]}…, policy {claims['x-ms-policy-hash'][:16]}…")
        job_keys = releaser_from_env(env).release(kek.kek_id, token, tee_key)
        print(f"    Key Vault released {kek.kek_id} wrapped to the TEE's key; unwrapped in memory")

        _step(5, "TEE: streaming the blob back and opening it in memory")
        with store.open_read(CONTAINER, BLOB) as blob:
            reader = SealedReader(blob, job_keys.kek_private, expected_context={"dataset_id": DATASET}, verify_digest=True)
            opened = hashlib.sha256()
            for segment in reader.segments():
                opened.update(segment)
    if opened.hexdigest() != digest:
        raise SecurityViolation("the opened plaintext differs from the data owner's")
    print(f"    every segment authenticated; plaintext SHA-256 {opened.hexdigest()[:16]}… matches the data owner's")
    summary = {"dataset": DATASET, "blob": f"{CONTAINER}/{BLOB}", "sealed_bytes": shard.sealed_bytes,
               "plaintext_sha256": digest, "kek_id": kek.kek_id}
    print("demo complete:", summary)
    return summary
