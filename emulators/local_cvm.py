"""The local stand-in for the confidential VM's launch: its reference measurement.

On Azure, MEASUREMENT is the digest of the guest's initial memory (firmware, and with it the kernel
and command line) that AMD's secure processor computes at launch. The local CVM is a process, not a
VM, so its simulated image has a fixed measurement, published here as the reference value the local
appraisal policy allows. The workload itself is measured for real, into HOST_DATA (trainer.workload).
"""

from __future__ import annotations

import hashlib

LAUNCH_MEASUREMENT = hashlib.sha384(b"securetrain local CVM image v1: simulated firmware, kernel and initrd").digest()
