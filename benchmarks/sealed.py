"""Seal and unseal throughput beside ``openssl speed`` (AES-256-GCM, SHA-256), and peak memory of a 2 GiB file.

Figures:
- ``openssl_gbps``: OpenSSL's single-core AES-256-GCM on 1 MiB blocks, the baseline for opening.
- ``openssl_sha256_gbps``: OpenSSL's single-core SHA-256 on 1 MiB blocks, the bound for sealing, which must
  hash every plaintext byte for the header (one pass, the hashing on a second thread beside encryption).
- ``unseal_gbps``: opening a sealed 1 GiB file and consuming the plaintext in memory, as the TEE does
  (it never writes plaintext to disk). ``unseal_ratio`` = unseal / openssl; the target is >= 0.6.
- ``unseal_verify_digest_gbps``: the same with the plaintext SHA-256 recomputed.
- ``unseal_to_file_gbps``: the CLI path, writing plaintext to a file (bounded by the disk here).
- ``seal_gbps``: sealing file to file (one pass over the input, the header rewritten in place; fsync at the end).
  ``seal_sha256_ratio`` = seal / openssl SHA-256; the target is >= 0.7.
- ``seal_to_memory_gbps``: sealing the same file into a discarding sink that seeks as a file does: the CPU
  cost without the disk. ``seal_to_memory_sha256_ratio`` likewise.
- ``sha256_pass_gbps``: ``hashlib`` SHA-256 of the same file in this process, nothing else: the bound of any
  seal, measured beside it (on a shared machine it moves with the load as the seal does, where ``openssl
  speed`` ran earlier). ``seal_to_memory_sha256_pass_ratio`` = seal to memory / that pass.
- ``tink_unseal_gbps``: the ``tink`` package's streaming decryption of the same stream, for reference.
- ``*_rss_growth_mib``: peak RSS growth while sealing / unsealing a 2 GiB file (target <= 64 MiB).

Usage: ``python -m benchmarks.sealed [--size-mib 1024] [--rss-size-mib 2048] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from securetrain.core.sealed import KekPrivateKey, KekPublicKey, SealedReader, seal, seal_file, unseal_file

KEK_ID = "https://vault.securetrain.bench/keys/kek/1"
MIB = 1 << 20


def openssl_bytes_per_second(algorithm: str, label: str) -> float:
    """``openssl speed -evp ALGORITHM`` on 1 MiB blocks, one core: bytes per second (its row ``label``)."""
    out = subprocess.run(
        ["openssl", "speed", "-evp", algorithm, "-bytes", str(MIB), "-seconds", "3"],
        capture_output=True, text=True, check=True,
    ).stdout
    match = re.search(rf"^{re.escape(label)}\s+([\d.]+)k", out, re.MULTILINE)
    if not match:
        raise RuntimeError(f"cannot read openssl speed output:\n{out}")
    return float(match.group(1)) * 1000


def write_random(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with path.open("wb") as f:
        for i in range(size // MIB):
            # Vary each block cheaply so no layer can deduplicate or compress the file.
            f.write(i.to_bytes(8, "big") + block[8:])


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class Discard(io.RawIOBase):
    """Drops what it is written but keeps a file's positions, so a seal into it takes the one-pass path."""

    def __init__(self) -> None:
        super().__init__()
        self._position = self._end = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._position += len(data)
        self._end = max(self._end, self._position)
        return len(data)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._position = offset + {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._end}[whence]
        return self._position


def sha256_pass(plain: Path) -> None:
    """Read and hash the file in 1 MiB blocks, as a seal reads it, and do nothing else."""
    digest, block = hashlib.sha256(), memoryview(bytearray(MIB))
    with plain.open("rb", buffering=0) as src:
        while n := src.readinto(block):
            digest.update(block[:n])


def seal_to_memory(plain: Path, kek: KekPublicKey) -> None:
    with plain.open("rb", buffering=0) as src:
        seal(src, Discard(), kek)


def consume(sealed: Path, kek: KekPrivateKey, verify_digest: bool = False) -> None:
    with sealed.open("rb", buffering=0) as src:
        for _ in SealedReader(src, kek, verify_digest=verify_digest).segments():
            pass


def tink_consume(sealed: Path, kek: KekPrivateKey) -> None:
    from tink import cleartext_keyset_handle, streaming_aead
    from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

    from securetrain.core.sealed import inspect

    streaming_aead.register()
    with sealed.open("rb") as src:
        header = inspect(src)
        dek = kek.unwrap(header.key.wrapped_dek, kek_id=header.key.kek_id, kek_thumbprint=header.key.kek_thumbprint)
        key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(
            key_value=dek,
            params=aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
                ciphertext_segment_size=header.content.segment_size, derived_key_size=32,
                hkdf_hash_type=common_pb2.SHA256,
            ),
        )
        keyset = tink_pb2.Keyset(primary_key_id=1, key=[tink_pb2.Keyset.Key(
            key_data=tink_pb2.KeyData(
                type_url="type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
                value=key.SerializeToString(), key_material_type=tink_pb2.KeyData.SYMMETRIC),
            status=tink_pb2.ENABLED, key_id=1, output_prefix_type=tink_pb2.RAW)])
        aead = cleartext_keyset_handle.from_keyset(keyset).primitive(streaming_aead.StreamingAead)
        with aead.new_decrypting_stream(src, header.content.stream_associated_data()) as dec:
            while dec.read(MIB):
                pass


def rss_growth_mib(mode: str, src: Path, dst: Path, key_pem: Path) -> float:
    """Run one seal or unseal in a fresh process; report its peak RSS above its RSS just before."""
    code = f"""
import resource, sys
from pathlib import Path
from securetrain.core.sealed import KekPrivateKey, KekPublicKey, seal_file, unseal_file
private = KekPrivateKey.from_pem(Path({str(key_pem)!r}).read_bytes())
public = KekPublicKey({KEK_ID!r}, private.private_key.public_key())
# The current RSS, not the peak so far: imports may have peaked higher than the operation will.
before = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
if {mode!r} == "seal":
    seal_file({str(src)!r}, {str(dst)!r}, public)
else:
    unseal_file({str(src)!r}, {str(dst)!r}, private)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="throughput file size (default 1024)")
    parser.add_argument("--rss-size-mib", type=int, default=2048, help="memory test file size (default 2048)")
    parser.add_argument("--runs", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    private = KekPrivateKey(key)
    public = KekPublicKey(KEK_ID, key.public_key())

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="securetrain-bench-") as tmp:
        work = Path(tmp)
        size = args.size_mib * MIB
        plain, sealed, back = work / "plain.bin", work / "plain.sealed", work / "back.bin"
        print(f"writing {args.size_mib} MiB of test data in {work}", flush=True)
        write_random(plain, size)

        openssl = openssl_bytes_per_second("aes-256-gcm", "AES-256-GCM")
        print(f"openssl speed -evp aes-256-gcm (1 MiB blocks, one core): {openssl / 1e9:.2f} GB/s", flush=True)
        sha256 = openssl_bytes_per_second("sha256", "sha256")
        print(f"openssl speed -evp sha256 (1 MiB blocks, one core): {sha256 / 1e9:.2f} GB/s", flush=True)

        seal_s = best_of(args.runs, lambda: seal_file(plain, sealed, public))
        seal_memory_s = best_of(args.runs, lambda: seal_to_memory(plain, public))
        sha256_pass_s = best_of(args.runs, lambda: sha256_pass(plain))
        unseal_s = best_of(args.runs, lambda: consume(sealed, private))
        verify_s = best_of(args.runs, lambda: consume(sealed, private, verify_digest=True))
        to_file_s = best_of(args.runs, lambda: unseal_file(sealed, back, private))
        tink_s = best_of(1, lambda: tink_consume(sealed, private))
        figures = {
            "size_bytes": size,
            "openssl_gbps": openssl / 1e9,
            "openssl_sha256_gbps": sha256 / 1e9,
            "seal_gbps": size / seal_s / 1e9,
            "seal_to_memory_gbps": size / seal_memory_s / 1e9,
            "sha256_pass_gbps": size / sha256_pass_s / 1e9,
            "unseal_gbps": size / unseal_s / 1e9,
            "unseal_verify_digest_gbps": size / verify_s / 1e9,
            "unseal_to_file_gbps": size / to_file_s / 1e9,
            "tink_unseal_gbps": size / tink_s / 1e9,
        }
        figures["unseal_ratio"] = figures["unseal_gbps"] / figures["openssl_gbps"]
        figures["seal_ratio"] = figures["seal_gbps"] / figures["openssl_gbps"]
        figures["seal_sha256_ratio"] = figures["seal_gbps"] / figures["openssl_sha256_gbps"]
        figures["seal_to_memory_sha256_ratio"] = figures["seal_to_memory_gbps"] / figures["openssl_sha256_gbps"]
        figures["seal_to_memory_sha256_pass_ratio"] = figures["seal_to_memory_gbps"] / figures["sha256_pass_gbps"]
        for name in ("seal", "seal_to_memory"):
            print(f"{name:>22}: {figures[name + '_gbps']:.2f} GB/s "
                  f"({figures[name + '_sha256_ratio']:.2f} x openssl sha256, target >= 0.7)", flush=True)
        print(f"{'sha256_pass':>22}: {figures['sha256_pass_gbps']:.2f} GB/s (seal to memory is "
              f"{figures['seal_to_memory_sha256_pass_ratio']:.2f} x this pass)", flush=True)
        for name in ("unseal", "unseal_verify_digest", "unseal_to_file", "tink_unseal"):
            print(f"{name:>22}: {figures[name + '_gbps']:.2f} GB/s "
                  f"({figures[name + '_gbps'] / figures['openssl_gbps']:.2f} x openssl)", flush=True)
        for path in (plain, sealed, back):
            path.unlink(missing_ok=True)

        rss_size = args.rss_size_mib * MIB
        print(f"writing {args.rss_size_mib} MiB for the memory test", flush=True)
        write_random(plain, rss_size)
        key_pem = work / "kek.pem"
        key_pem.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        figures["rss_size_bytes"] = rss_size
        figures["seal_rss_growth_mib"] = rss_growth_mib("seal", plain, sealed, key_pem)
        figures["unseal_rss_growth_mib"] = rss_growth_mib("unseal", sealed, back, key_pem)
        print(f"peak RSS growth, {args.rss_size_mib} MiB file: seal {figures['seal_rss_growth_mib']:.1f} MiB, "
              f"unseal {figures['unseal_rss_growth_mib']:.1f} MiB (target <= 64)", flush=True)

    print(json.dumps({"benchmark": "sealed", **{k: round(v, 3) if isinstance(v, float) else v
                                                 for k, v in figures.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
