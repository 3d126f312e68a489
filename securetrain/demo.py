"""``securetrain demo``: the deepest real path that exists, end to end on the local stack, narrated.

1. the local stack comes up (Azurite over HTTPS, certificates from the local CA);
2. the data owner turns a dataset that ships inside scikit-learn into Parquet and seals it for the
   KEK's public key, binding its dataset id and classification;
3. the sealed file is streamed to blob storage; what storage holds is checked to be ciphertext;
4. a reader holding the KEK's private key (the TEE's role) streams the blob back and opens it in
   memory: every segment authenticates and the plaintext digest equals the data owner's.

The KEK pair is a local file in the stack's state directory until the Key Vault stand-in holds it
(a later stage); the data key, the wrap and the stream are the production ones.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.errors import SecurityViolation
from securetrain.datasets import bundled_table, to_parquet
from securetrain.fsutil import atomic_output
from securetrain.sealed import KekPrivateKey, KekPublicKey, SealedReader, inspect, seal
from securetrain.stack import StackConfig, up
from securetrain.storage import BlobStore

log = logging.getLogger(__name__)

DATASET = "breast-cancer"
CONTAINER = "datasets"
BLOB = f"{DATASET}/v1/shard-00000.parquet.sealed"
DEMO_KEK_ID = "https://securetrain-local/keys/demo-kek/1"


def _step(number: int, text: str) -> None:
    print(f"[{number}] {text}", flush=True)


def _demo_kek(folder: Path) -> KekPrivateKey:
    """The demo KEK pair, made once (RSA 3072) and kept owner-only in the state directory."""
    path = folder / "demo-kek.pem"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        with atomic_output(path, mode=0o600) as out:
            out.write(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return KekPrivateKey.from_pem(path.read_bytes())


def run(state_dir: Path | None = None) -> dict[str, object]:
    config = StackConfig.resolve(state_dir)
    _step(1, f"bringing up the local stack in {config.layout.root}")
    env = up(config)
    print(f"    blob storage: {env['SECURETRAIN_BLOB_ENDPOINT']} (TLS verified with {env['SECURETRAIN_CA_BUNDLE']})")

    kek_private = _demo_kek(config.layout.root / "demo")
    kek = KekPublicKey(DEMO_KEK_ID, kek_private.private_key.public_key())
    table = bundled_table(DATASET)
    plaintext = to_parquet(table)
    digest = hashlib.sha256(plaintext).hexdigest()
    _step(2, f"data owner: sealing {DATASET} ({table.num_rows} rows, {len(plaintext)} bytes of Parquet) "
             f"for KEK {kek.kek_id}")
    sealed = io.BytesIO()
    header = seal(io.BytesIO(plaintext), sealed, kek, {"dataset_id": DATASET, "classification": "phi-demo",
                                                        "format": "parquet"})
    print(f"    plaintext SHA-256 {digest[:16]}…, {header.content.layout.segment_count} segment(s), "
          f"data key wrapped {header.key.algorithm} to KEK thumbprint {header.key.kek_thumbprint[:16]}…")

    with BlobStore.from_stack_env(env) as store:
        store.ensure_container(CONTAINER)
        sealed.seek(0)
        info = store.upload_stream(CONTAINER, BLOB, sealed, length=len(sealed.getvalue()), overwrite=True,
                                   metadata={"dataset_id": DATASET, "plaintext_sha256": digest})
        _step(3, f"uploaded {CONTAINER}/{BLOB} ({info.size} bytes) to Azurite over HTTPS")
        with store.open_read(CONTAINER, BLOB) as blob:
            stored = blob.read()
        if plaintext[:64] in stored or plaintext[-64:] in stored:
            raise SecurityViolation("storage holds plaintext: the demo found Parquet bytes in the blob")
        print(f"    storage holds ciphertext only; header readable without a key: "
              f"context {dict(inspect(io.BytesIO(stored)).content.context)}")

        _step(4, "TEE role: streaming the blob back and opening it in memory with the KEK private key")
        with store.open_read(CONTAINER, BLOB) as blob:
            reader = SealedReader(blob, kek_private, expected_context={"dataset_id": DATASET}, verify_digest=True)
            opened = hashlib.sha256()
            for segment in reader.segments():
                opened.update(segment)
    if opened.hexdigest() != digest:
        raise SecurityViolation("the opened plaintext differs from the data owner's")
    print(f"    every segment authenticated; plaintext SHA-256 {opened.hexdigest()[:16]}… matches the data owner's")
    summary = {"dataset": DATASET, "blob": f"{CONTAINER}/{BLOB}", "sealed_bytes": info.size,
               "plaintext_sha256": digest, "kek_id": kek.kek_id}
    print("demo complete:", summary)
    return summary
