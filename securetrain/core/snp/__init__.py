"""AMD SEV-SNP attestation evidence: the report layout, the VCEK certificate chain and the verifier.

- :mod:`securetrain.core.snp.report` — the ATTESTATION_REPORT, parsed and written byte-exactly;
- :mod:`securetrain.core.snp.certs` — the VCEK -> ASK -> ARK chain (read without cryptography's X.509 loader);
- :mod:`securetrain.core.snp.roots` — trusted roots and AMD's published ARKs;
- :mod:`securetrain.core.snp.verifier` — :func:`~securetrain.core.snp.verifier.verify_report`.

What a verified report must contain to be accepted is decided elsewhere: by the attestation service's
attestation policy, over the report's claims.
"""
