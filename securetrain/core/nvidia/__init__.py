"""NVIDIA GPU (Hopper H100 in confidential-computing mode) attestation evidence.

- :mod:`securetrain.core.nvidia.spdm` — the SPDM 1.1 GET_MEASUREMENTS request and signed response, parsed strictly;
- :mod:`securetrain.core.nvidia.opaque` — the NVIDIA opaque data inside the response (driver, VBIOS, FWID ...);
- :mod:`securetrain.core.nvidia.certs` — the GPU's device certificate chain and the FWID in its leaf;
- :mod:`securetrain.core.nvidia.roots` — pinned device-identity roots and NVIDIA's published one;
- :mod:`securetrain.core.nvidia.reference` — reference measurements (from NVIDIA's RIMs) a report must match;
- :mod:`securetrain.core.nvidia.binding` — the GPU nonce derived from the CPU evidence's runtime data;
- :mod:`securetrain.core.nvidia.verifier` — :func:`~securetrain.core.nvidia.verifier.verify_gpu_report`.
"""
