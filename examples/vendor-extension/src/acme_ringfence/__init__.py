"""Acme Security's Ringfence extension, built on the public SDK (`ringfence.sdk`) only."""

from acme_ringfence._tmp_exec import DEFAULT_DIRECTORIES, RULE, SettingsError, SuspiciousTmpExec

__all__ = ["DEFAULT_DIRECTORIES", "RULE", "SettingsError", "SuspiciousTmpExec"]
