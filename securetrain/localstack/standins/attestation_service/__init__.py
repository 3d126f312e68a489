"""The local stand-in for Azure Attestation (MAA): same endpoints, same body and token shapes.

``python -m securetrain.localstack.standins.attestation_service --help`` runs it; ``securetrain stack up`` starts it.
"""
