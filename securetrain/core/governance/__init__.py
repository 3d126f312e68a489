"""Governance of training by its parties: the signed contract a run happens under, and its privacy budget."""
