"""Azure confidential VM evidence: SEV-SNP behind Azure's paravisor (HCL), with a vTPM.

On an Azure confidential VM the guest does not talk to the AMD secure processor: the paravisor does,
and leaves an *HCL report* in vTPM NV index ``0x01400001`` — an SEV-SNP report whose REPORT_DATA
binds a JSON document of *runtime claims*, among them the vTPM's attestation key (``HCLAkPub``). The
vTPM then signs quotes over its PCRs with that key. Evidence is both, plus the VCEK chain:

- :mod:`.hcl` — the HCL report layout and the runtime claims it carries;
- :mod:`.tpm` — the TPM2 quote (TPMS_ATTEST and TPMT_SIGNATURE);
- :mod:`.evidence` — the evidence document an Azure CVM's attestation agent produces;
- :mod:`.verifier` — :func:`~securetrain.core.azure_cvm.verifier.verify_cvm_evidence`, every check named;
- :mod:`.errors` — the checks' names and the one error every refusal raises.
"""
