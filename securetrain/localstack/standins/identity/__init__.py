"""A local OAuth 2.0 token issuer for the stack's named identities (the Microsoft Entra ID stand-in).

Issues RS256 JWT access tokens with the client-credentials grant; Key Vault's stand-in validates them
against the keys this service publishes. See :mod:`securetrain.localstack.standins.identity.app`.
"""
