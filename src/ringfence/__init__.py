"""Ringfence: Linux endpoint security built only on interfaces the kernel already offers."""

__version__ = "0.1.0"
