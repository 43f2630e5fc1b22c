"""The version of lipgraph (a leaf module: the cache fingerprint and the CLI read it without importing the package)."""

__version__ = "0.1.0"
