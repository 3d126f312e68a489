"""Azure Container Instances (confidential) evidence: an SEV-SNP utility VM that Microsoft endorses.

On ACI a container group runs in a utility VM (UVM) that Microsoft builds and signs. Its evidence is:

- the SEV-SNP report of the UVM (verified by :mod:`securetrain.core.snp`, as any SNP report);
- the UVM endorsement (:mod:`~securetrain.core.aci.uvm_endorsement`): a COSE_Sign1 document in which
  Microsoft states the launch measurement of a UVM build and its security version number;
- HOST_DATA = SHA-256 of the confidential computing enforcement (CCE) policy that the UVM enforces on the
  containers (:mod:`~securetrain.core.aci.cce_policy`): the workload is bound by the hash of its policy.

:mod:`~securetrain.core.aci.evidence` reads the two shapes this evidence travels in (the azure-cleanroom
document and MAA's ``/attest/SevSnpVm`` request with ``Endorsements``), and
:mod:`~securetrain.core.aci.verifier` checks everything and gives MAA's claim set for it.
"""
