"""The local stand-ins for the Azure services and the hardware securetrain uses, for offline runs and tests.

Each speaks the real wire protocol or data format of what it replaces, so the production code paths run
unchanged against it; none is trusted by a default configuration.
"""
