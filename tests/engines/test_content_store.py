"""The agent's content store: operator files read as root, staged as read-only slots, swapped atomically."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from ringfence.agent._content import (
    KEEP_SLOTS,
    ContentError,
    ContentStore,
    ContentWatcher,
    ExtensionView,
    StagedContent,
    migrate_settings,
)

EXT = "ringfence.reputation"


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    state = tmp_path / "state"
    state.mkdir()
    return ContentStore(str(state))


def root_only_file(tmp_path: Path, text: str) -> Path:
    """A file in a 0700 directory, mode 0600: what `ringfence-ext` could never open."""
    d = tmp_path / "root-only"
    d.mkdir(mode=0o700, exist_ok=True)
    d.chmod(0o700)
    f = d / "bl.txt"
    f.write_text(text)
    f.chmod(0o600)
    return f


def test_root_only_file_staged_readable_by_others_under_active(store: ContentStore, tmp_path: Path) -> None:
    origin = root_only_file(tmp_path, "abc\n")
    staged = store.stage_all({EXT: {"blocklist.txt": str(origin)}})[EXT]
    copy = Path(staged.content_dir) / "blocklist.txt"
    assert copy.read_text() == "abc\n"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o644 and copy.stat().st_uid == 0
    assert stat.S_IMODE(Path(staged.root).stat().st_mode) == 0o755
    assert stat.S_IMODE(Path(store.root).stat().st_mode) == 0o711
    assert os.path.islink(staged.content_dir)
    assert os.readlink(staged.content_dir) == "slots/1"


def test_missing_file_is_one_line_naming_it(store: ContentStore, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ContentError) as raised:
        store.stage_all({EXT: {"blocklist.txt": str(missing)}})
    message = str(raised.value)
    assert "\n" not in message
    assert message == f"content of extension {EXT}: {missing}: cannot open: No such file or directory"


def test_every_bad_file_named_at_once(store: ContentStore, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ContentError) as raised:
        store.stage_all({EXT: {"a.txt": str(tmp_path / "gone"), "b.txt": str(fifo), "c.txt": str(tmp_path)}})
    message = str(raised.value)
    assert f"{tmp_path / 'gone'}: cannot open" in message
    assert f"{fifo}: not a regular file" in message
    assert f"{tmp_path}: not a regular file" in message


def test_failed_stage_leaves_the_active_slot_and_no_half_slot(store: ContentStore, tmp_path: Path) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("v1\n")
    staged = store.stage_all({EXT: {"blocklist.txt": str(origin)}})[EXT]
    staged.origins["extra.txt"] = str(tmp_path / "missing")
    with pytest.raises(ContentError):
        store.stage(staged)
    assert (Path(staged.content_dir) / "blocklist.txt").read_text() == "v1\n"
    assert os.listdir(Path(staged.root) / "slots") == ["1"]


def test_restage_swaps_the_whole_slot_and_keeps_a_few(store: ContentStore, tmp_path: Path) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("v1\n")
    staged = store.stage_all({EXT: {"blocklist.txt": str(origin)}})[EXT]
    old_slot = os.path.realpath(staged.content_dir)
    for n in range(2, 7):
        origin.write_text(f"v{n}\n")
        store.stage(staged)
    assert (Path(staged.content_dir) / "blocklist.txt").read_text() == "v6\n"
    assert (Path(old_slot) / "blocklist.txt").exists() is False  # pruned
    slots = sorted(int(n) for n in os.listdir(Path(staged.root) / "slots"))
    assert slots == list(range(7 - KEEP_SLOTS, 7))
    assert staged.slot == 6


def test_leftover_half_written_slot_from_a_crash_is_replaced(store: ContentStore, tmp_path: Path) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("good\n")
    half = Path(store.root) / EXT / "slots" / ".new-1"
    half.mkdir(parents=True)
    (half / "blocklist.txt").write_text("hal")
    staged = store.stage_all({EXT: {"blocklist.txt": str(origin)}})[EXT]
    assert (Path(staged.content_dir) / "blocklist.txt").read_text() == "good\n"
    assert not half.exists()


def test_symlink_planted_as_the_extension_directory_refused(store: ContentStore, tmp_path: Path) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("x\n")
    os.makedirs(store.root)
    os.symlink(str(tmp_path), os.path.join(store.root, EXT))
    with pytest.raises(ContentError, match="not a root-owned directory"):
        store.stage_all({EXT: {"blocklist.txt": str(origin)}})


def test_staged_paths_map_the_extensions_view_to_the_operators_file(
    store: ContentStore, tmp_path: Path
) -> None:
    origin = root_only_file(tmp_path, "x\n")
    staged = store.stage_all({EXT: {"blocklist.txt": str(origin)}})[EXT]
    assert staged.staged_paths() == {f"{staged.content_dir}/blocklist.txt": str(origin)}


def test_watcher_restages_a_changed_file_once_it_is_stable(store: ContentStore, tmp_path: Path) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("v1\n")
    contents = store.stage_all({EXT: {"blocklist.txt": str(origin)}})
    staged: list[StagedContent] = []
    watcher = ContentWatcher(store, contents, on_staged=staged.append)
    watcher.check()
    assert staged == []  # nothing changed
    origin.write_text("v2, being written\n")
    watcher.check()  # changed since the last look: maybe mid-write, wait a round
    assert staged == []
    watcher.check()
    assert [s.slot for s in staged] == [2]
    assert (Path(contents[EXT].content_dir) / "blocklist.txt").read_text() == "v2, being written\n"


def test_watcher_keeps_the_active_slot_when_the_file_vanishes(store: ContentStore, tmp_path: Path) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("v1\n")
    contents = store.stage_all({EXT: {"blocklist.txt": str(origin)}})
    watcher = ContentWatcher(store, contents)
    origin.unlink()
    watcher.check()
    watcher.check()
    item = contents[EXT]
    assert item.errors == 1 and "cannot open" in item.last_error and str(origin) in item.last_error
    watcher.check()  # the same failure is not retried every second
    assert item.errors == 1
    assert (Path(item.content_dir) / "blocklist.txt").read_text() == "v1\n"
    origin.write_text("v3\n")
    watcher.check()
    watcher.check()
    assert (Path(item.content_dir) / "blocklist.txt").read_text() == "v3\n"
    assert item.last_error == ""


def test_old_blocklist_setting_migrated_to_content_and_removed_from_settings() -> None:
    content, settings = migrate_settings(
        {}, {EXT: {"blocklist": "/etc/bl.txt", "memo_entries": 5}, "other": {"blocklist": "/x"}}
    )
    assert content == {EXT: {"blocklist.txt": "/etc/bl.txt"}}
    assert settings == {EXT: {"memo_entries": 5}, "other": {"blocklist": "/x"}}


def test_old_setting_and_content_entry_for_the_same_file_refused() -> None:
    with pytest.raises(ContentError, match="keep the content entry only"):
        migrate_settings({EXT: {"blocklist.txt": "/a"}}, {EXT: {"blocklist": "/b"}})


def test_old_setting_with_a_relative_path_refused() -> None:
    with pytest.raises(ContentError, match="must be an absolute path"):
        migrate_settings({}, {EXT: {"blocklist": "bl.txt"}})


class FakeExtension:
    """The watcher's view of one extension, set by the test."""

    def __init__(self) -> None:
        self.view = ExtensionView("running", restarts=0, start_failures=0)

    def __call__(self, ext_id: str) -> ExtensionView | None:
        return self.view if ext_id == EXT else None


def _staged_and_watched(
    store: ContentStore, origin: Path
) -> tuple[StagedContent, ContentWatcher, FakeExtension]:
    contents = store.stage_all({EXT: {"blocklist.txt": str(origin)}})
    ext = FakeExtension()
    return contents[EXT], ContentWatcher(store, contents, extension_state=ext), ext


def _stage_new_version(watcher: ContentWatcher, origin: Path, text: str) -> None:
    origin.write_text(text)
    watcher.check()
    watcher.check()


def test_extension_failing_to_start_with_a_new_slot_gets_the_last_good_one_back(
    store: ContentStore, tmp_path: Path
) -> None:
    """A restart with content the engine rejects would crash-loop it into quarantine: revert first."""
    origin = tmp_path / "bl.txt"
    origin.write_text("good\n")
    item, watcher, ext = _staged_and_watched(store, origin)
    _stage_new_version(watcher, origin, "bad\n")
    assert (item.slot, item.good_slot) == (2, 1)
    ext.view = ExtensionView("backoff", restarts=1, start_failures=1)  # its setup rejected slot 2
    watcher.check()
    assert (Path(item.content_dir) / "blocklist.txt").read_text() == "good\n"
    assert item.slot == 1 and item.reverts == 1
    assert "slot 2 (" in item.last_error and str(origin) in item.last_error
    ext.view = ExtensionView("running", restarts=2, start_failures=1)
    watcher.check()
    watcher.check()  # the rejected file is not staged again until it changes
    assert item.slot == 1
    _stage_new_version(watcher, origin, "fixed\n")
    assert (Path(item.content_dir) / "blocklist.txt").read_text() == "fixed\n"


def test_crash_while_running_with_a_new_slot_does_not_revert(store: ContentStore, tmp_path: Path) -> None:
    """A crash (or a kill from outside) says nothing about content: only a failed start does."""
    origin = tmp_path / "bl.txt"
    origin.write_text("v1\n")
    item, watcher, ext = _staged_and_watched(store, origin)
    _stage_new_version(watcher, origin, "v2\n")
    ext.view = ExtensionView("backoff", restarts=0, start_failures=0)
    watcher.check()
    assert item.slot == 2 and item.reverts == 0


def test_new_slot_the_extension_restarted_with_becomes_the_last_good(
    store: ContentStore, tmp_path: Path
) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("v1\n")
    item, watcher, ext = _staged_and_watched(store, origin)
    _stage_new_version(watcher, origin, "v2\n")
    ext.view = ExtensionView("running", restarts=1, start_failures=0)  # restarted with slot 2, runs
    watcher.check()
    assert item.good_slot == 2
    ext.view = ExtensionView("backoff", restarts=1, start_failures=1)
    watcher.check()
    assert item.slot == 2 and item.reverts == 0  # nothing newer than the good slot to blame


def test_last_good_slot_survives_pruning(store: ContentStore, tmp_path: Path) -> None:
    origin = tmp_path / "bl.txt"
    origin.write_text("v1\n")
    item, watcher, _ = _staged_and_watched(store, origin)
    for n in range(2, 8):
        _stage_new_version(watcher, origin, f"v{n}\n")
    assert item.good_slot == 1
    assert (Path(item.root) / "slots" / "1" / "blocklist.txt").read_text() == "v1\n"


def test_reader_racing_restages_only_ever_sees_whole_versions(store: ContentStore, tmp_path: Path) -> None:
    """What the engine does (resolve `active` once, read the file there) against 40 stages in a row:
    every read is one complete version, never a mix or a truncated copy."""
    origin = tmp_path / "bl.txt"
    versions = [f"version {n}\n" * 5000 for n in range(41)]
    origin.write_text(versions[0])
    item = store.stage_all({EXT: {"blocklist.txt": str(origin)}})[EXT]
    seen: list[str] = []
    problems: list[str] = []
    done = threading.Event()

    def read_loop() -> None:
        while not done.is_set() or not seen:
            slot = os.path.realpath(item.content_dir)
            try:
                text = Path(slot, "blocklist.txt").read_text()
            except FileNotFoundError:  # the slot was pruned after we resolved it: the engine retries
                continue
            if text not in versions:
                problems.append(f"{slot}: {len(text)} bytes, not a whole version")
            seen.append(text)

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for text in versions[1:]:
            origin.write_text(text)
            store.stage(item)
    finally:
        done.set()
        reader.join(timeout=30)
    assert problems == []
    assert len(seen) > 0
    assert Path(item.content_dir, "blocklist.txt").read_text() == versions[-1]
