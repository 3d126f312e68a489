"""securetrain: confidential ML training orchestrated by Apache Airflow.

The core that both sides of the trust boundary share: the sealed-data format, the SEV-SNP verifier,
release policies, the audit chain, the local stack and the command line.
"""

__version__ = "0.1.0"
