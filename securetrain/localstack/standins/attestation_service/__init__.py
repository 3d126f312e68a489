"""The local stand-in for Azure Attestation (MAA): same endpoints, bodies, token shapes and policy language.

``python -m securetrain.localstack.standins.attestation_service --help`` runs it; ``securetrain stack up`` starts it.
"""
