"""Helpers for the YARA engine's tests: content directories laid out as the agent stages them, and rules."""

from __future__ import annotations

from pathlib import Path


class Content:
    """A content directory as the agent lays it out: `active` -> slots/<n>, each slot complete before the
    symlink is swapped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.slot = 0
        (root / "slots").mkdir(parents=True)

    @property
    def dir(self) -> str:
        return str(self.root / "active")

    def publish(self, files: dict[str, str | bytes]) -> None:
        self.slot += 1
        slot = self.root / "slots" / str(self.slot)
        slot.mkdir()
        for name, data in files.items():
            (slot / name).write_bytes(data.encode() if isinstance(data, str) else data)
        link = self.root / ".active-new"
        link.symlink_to(f"slots/{self.slot}")
        link.replace(self.root / "active")


BLOCK_RULE = """
rule evil_marker : block malware {
    meta:
        author = "tests"
        description = "the evil marker"
        score = 90
    strings:
        $m = "EVIL-MARKER-1234"
    condition:
        $m
}
"""

NOTICE_RULE = """
rule suspicious_marker : notice {
    meta:
        description = "worth a look"
    strings:
        $m = "SUSPICIOUS-MARKER-5678"
    condition:
        $m
}
"""

# Never true (a byte sum is at most 510), so every pair is tried: filesize squared steps.
SLOW_RULE = """
rule quadratic {
    condition:
        for any i in (0..filesize - 1) : (
            for any j in (0..filesize - 1) : ( uint8(i) + uint8(j) == 1000 )
        )
}
"""
