"""Whose files the agent hands over: root copies content for the extensions, so only root may be able to
change it. An attacker who can swap the operator's file, or plant a symlink on the way (to /etc/shadow),
must not get the agent to copy what it points at into a slot the sandbox and other users can read."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfence.agent._content import ContentError, ContentStore, untrusted_path

EXT = "ringfence.reputation"
NOBODY = 65534


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    state = tmp_path / "state"
    state.mkdir()
    return ContentStore(str(state))


@pytest.fixture
def sticky_dir() -> Iterator[Path]:
    """A world-writable sticky directory like /tmp, of the test's own."""
    d = Path(tempfile.mkdtemp(prefix="rf-sticky-", dir="/tmp"))
    d.chmod(0o1777)
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def _refused(store: ContentStore, origin: Path) -> str:
    with pytest.raises(ContentError) as raised:
        store.stage_all({EXT: {"blocklist.txt": str(origin)}})
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_file_owned_by_another_user_is_refused(store: ContentStore, tmp_path: Path) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("# list\n")
    os.chown(origin, NOBODY, NOBODY)
    assert "must be owned by root" in _refused(store, origin)


def test_file_writable_by_others_is_refused(store: ContentStore, tmp_path: Path) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("# list\n")
    origin.chmod(0o666)
    assert "not writable by group or others" in _refused(store, origin)


def test_users_symlink_in_tmp_to_shadow_is_refused_and_nothing_is_copied(
    store: ContentStore, sticky_dir: Path
) -> None:
    planted = sticky_dir / "blocklist.txt"
    planted.symlink_to("/etc/shadow")
    os.lchown(planted, NOBODY, NOBODY)
    message = _refused(store, planted)
    assert f"{planted} could be replaced" in message  # the user's entry in a sticky dir
    shadow = Path("/etc/shadow").read_bytes()
    staged = Path(store.root) / EXT
    assert not any(p.is_file() and p.read_bytes() == shadow for p in staged.rglob("*"))


def test_users_file_in_a_sticky_dir_is_refused_and_roots_file_is_taken(
    store: ContentStore, sticky_dir: Path
) -> None:
    theirs = sticky_dir / "theirs.txt"
    theirs.write_text("# list\n")
    os.chown(theirs, NOBODY, NOBODY)
    assert "could be replaced" in _refused(store, theirs)
    ours = sticky_dir / "ours.txt"
    ours.write_text("# list\n")
    ours.chmod(0o644)
    staged = store.stage_all({EXT: {"blocklist.txt": str(ours)}})
    assert Path(staged[EXT].content_dir, "blocklist.txt").read_text() == "# list\n"


def test_directory_writable_by_others_without_sticky_bit_is_refused(
    store: ContentStore, tmp_path: Path
) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    origin = d / "bl.txt"
    origin.write_text("# list\n")
    assert f"{d} is writable by others" in _refused(store, origin)


def test_roots_symlinks_and_dot_dots_are_followed_and_checked_where_they_lead(tmp_path: Path) -> None:
    good = tmp_path / "lists"
    good.mkdir()
    (good / "bl.txt").write_text("# list\n")
    (tmp_path / "link").symlink_to(good)
    assert untrusted_path(str(tmp_path / "link" / "bl.txt")) is None
    assert untrusted_path(str(tmp_path / "lists" / ".." / "lists" / "bl.txt")) is None
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert untrusted_path(str(loop / "x")) == "too many symlinks on the way"
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (open_dir / "bl.txt").write_text("x")
    (tmp_path / "to-open").symlink_to(open_dir)
    assert "is writable by others" in (untrusted_path(str(tmp_path / "to-open" / "bl.txt")) or "")


def test_users_symlink_in_a_root_directory_is_refused(tmp_path: Path) -> None:
    """A symlink a user made (in a directory of theirs that root's path passes through, say)."""
    link = tmp_path / "bl.txt"
    link.symlink_to("/etc/shadow")
    os.lchown(link, NOBODY, NOBODY)
    assert untrusted_path(str(link)) == f"{link} is a symlink owned by uid {NOBODY}: " + (
        "only root may be able to change content the agent hands over: it must be owned by root and not "
        "writable by group or others"
    )
