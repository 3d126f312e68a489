"""The local stand-in for the Azure Instance Metadata Service (IMDS): THIM's VCEK chain and the VM's image.

``python -m securetrain.localstack.standins.imds --help`` runs it. See :mod:`securetrain.localstack.standins.imds.app`.
"""
