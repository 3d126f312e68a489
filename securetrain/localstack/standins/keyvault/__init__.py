"""The local Azure Key Vault stand-in: the keys REST API, Secure Key Release, RBAC roles, an access log.

Modules: :mod:`.app` (routes), :mod:`.store` (keys at rest), :mod:`.authz` (tokens, roles, access log),
:mod:`.release` (Secure Key Release). ``python -m securetrain.localstack.standins.keyvault --help`` runs it.
"""
