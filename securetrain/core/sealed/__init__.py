"""The sealed-data format for datasets, checkpoints and models (docs/formats.md).

    seal(src, dst, KekPublicKey, context)        anyone with the KEK's public key
    SealedReader(src, KekPrivateKey, ...)         the TEE, after Secure Key Release
    SealedReader(src, reader.opened, ...)         the same file again, its data key not unwrapped again
    inspect(src)                                  anyone: the header, nothing decrypted
"""

from securetrain.core.sealed.envelope import (
    OpenedHeader,
    SealedReader,
    content_digest,
    inspect,
    seal,
    seal_file,
    unseal,
    unseal_file,
)
from securetrain.core.sealed.header import SealedHeader
from securetrain.core.sealed.kek import KekPrivateKey, KekPublicKey
from securetrain.core.sealed.stream import DEFAULT_SEGMENT_SIZE

__all__ = [
    "content_digest",
    "DEFAULT_SEGMENT_SIZE",
    "KekPrivateKey",
    "KekPublicKey",
    "OpenedHeader",
    "SealedHeader",
    "SealedReader",
    "inspect",
    "seal",
    "seal_file",
    "unseal",
    "unseal_file",
]
