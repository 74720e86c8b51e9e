"""Content: packages, and their signed release through TUF (python-tuf). Host-side tooling: it imports
`events` and `_linux` at most, never sensors, broker or extensions.

    KeyStore(dir).init(ExpiryPolicy(), now)          the publisher's four keys and a signed root
    Repository(repo, keys, policy, now).publish(pkg)  add a package (load_package(path)) and sign
    TufContentUpdater(UpdateConfig(url, state_dir)).update() -> UpdateReport   never raises
    FakeContentUpdates(*reports)                     the same seam (ContentUpdates) for tests
    UpdateSchedule().run_if_due(updates, monotonic_now)   when to call it: an interval, backoff on failure

Not here yet (issue 8): the validator, the content slots (staged/active/last-known-good), shadow runs.
The agent's content slots read STATE/content-updates/ENGINE/VERSION/, which this layer fills.

Errors (the tree):
    ContentError             anything this layer raises
      PackageError           a package or its manifest is unusable; `.where`
      KeyStoreError          the key directory is missing, would be overwritten, or a key does not fit
      PublishError           the repository refused a publication (a version that does not go up, ...)
      UpdateError            the client could not refresh, verify or stage (update() reports it instead)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringfence._lazy import lazy_names
from ringfence.content._errors import ContentError, KeyStoreError, PackageError, PublishError, UpdateError
from ringfence.content._package import Manifest, Package, load_package, version_key
from ringfence.content._schedule import UpdateSchedule
from ringfence.content._stage import staged_dir, staged_versions

if TYPE_CHECKING:
    from ringfence.content._client import (
        ContentUpdates,
        FakeContentUpdates,
        Staged,
        TufContentUpdater,
        UpdateConfig,
        UpdateReport,
        install_trusted_root,
    )
    from ringfence.content._keys import ExpiryPolicy, KeyStore
    from ringfence.content._repository import Published, Repository
    from ringfence.content._serve import make_server

# python-tuf, securesystemslib and the HTTP client load on first use of these names, not on import: the
# agent imports this package for package versions and staged content, and follows a content URL only
# where one is configured
_LAZY = {
    "ringfence.content._client": (
        "ContentUpdates", "FakeContentUpdates", "Staged", "TufContentUpdater", "UpdateConfig", "UpdateReport",
        "install_trusted_root",
    ),
    "ringfence.content._keys": ("ExpiryPolicy", "KeyStore"),
    "ringfence.content._repository": ("Published", "Repository"),
    "ringfence.content._serve": ("make_server",),
}  # fmt: skip
__getattr__ = lazy_names(__name__, _LAZY, globals())

__all__ = [
    "ContentError",
    "ContentUpdates",
    "ExpiryPolicy",
    "FakeContentUpdates",
    "KeyStore",
    "KeyStoreError",
    "Manifest",
    "Package",
    "PackageError",
    "PublishError",
    "Published",
    "Repository",
    "Staged",
    "TufContentUpdater",
    "UpdateConfig",
    "UpdateError",
    "UpdateReport",
    "UpdateSchedule",
    "install_trusted_root",
    "load_package",
    "make_server",
    "staged_dir",
    "staged_versions",
    "version_key",
]
