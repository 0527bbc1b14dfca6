"""Configuration: the typed schema of every group, its checks, user errors and secret redaction. Imports no torch."""
