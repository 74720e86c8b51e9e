"""The content layer's errors: one root, each message one line that names what and where.

ContentError             anything this layer raises
  PackageError           a package (directory or tar) or its manifest is unusable; `.where`
  KeyStoreError          the key directory is missing, would be overwritten, or a key does not fit
  PublishError           the repository refused a publication (a version that does not go up, ...)
  UpdateError            the client could not refresh, verify or stage (the scheduled path reports it
                         in an UpdateReport instead of raising)
"""

from __future__ import annotations


class ContentError(Exception):
    """Anything the content layer raises."""


class PackageError(ContentError):
    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where


class KeyStoreError(ContentError):
    pass


class PublishError(ContentError):
    pass


class UpdateError(ContentError):
    pass
