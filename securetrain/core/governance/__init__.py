"""Governance: the signed multi-party training contract, its revocations, and the job-terms check (docs/governance.md)."""
