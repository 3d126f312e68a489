"""Attestation, the relying party's side: submitting evidence to an MAA-shaped service and
validating the tokens it signs. The SEV-SNP report verifier itself is :mod:`securetrain.core.snp`."""
