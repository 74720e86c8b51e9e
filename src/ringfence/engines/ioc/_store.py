"""A compact immutable set of fixed-size keys (digests, network addresses), each with an optional label and
the index of the source it came from. No Python object per entry.

Storage: 256 shards by the key's first byte, each a sorted buffer of keys searched by bisection, its
labels' bytes back to back with one 4-byte end offset per entry (only in shards that have a label), and
one 4-byte source index per entry. A million sha256 entries cost 40 MB plus their labels' text, where a
set of bytes objects costs over 100 MB (bench/content_bench.py). Each shard is sorted and packed on its
own, so building needs little more than the parsed list.
"""

from __future__ import annotations

import array
import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from ringfence.engines.ioc._issues import Issue, warning

_CHUNK_ENTRIES = 1024  # keys per parse chunk: every chunk the same size, so freed ones are reused


class _Records:
    """A sorted buffer of `size`-byte records as a sequence, for `bisect`."""

    __slots__ = ("_buf", "_n", "_size")

    def __init__(self, buf: bytes, size: int) -> None:
        self._buf = buf
        self._size = size
        self._n = len(buf) // size

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> bytes:
        return self._buf[i * self._size : (i + 1) * self._size]


@dataclass(frozen=True, slots=True, eq=True)
class _Shard:
    keys: bytes = b""
    labels: bytes = b""
    ends: array.array[int] = field(default_factory=lambda: array.array("I"))
    sources: array.array[int] = field(default_factory=lambda: array.array("I"))

    def label(self, i: int) -> str | None:
        if not self.labels:
            return None
        start = self.ends[i - 1] if i else 0
        return self.labels[start : self.ends[i]].decode("utf-8") or None

    @property
    def nbytes(self) -> int:
        return (
            len(self.keys)
            + len(self.labels)
            + self.ends.itemsize * len(self.ends)
            + self.sources.itemsize * len(self.sources)
        )


_EMPTY = _Shard()


@dataclass(frozen=True, slots=True)
class KeyMatch:
    key: bytes
    label: str | None
    source: str  # the file (and, for STIX, the indicator id) the entry came from

    @property
    def hex(self) -> str:
        return self.key.hex()

    @property
    def sha256(self) -> str:
        """The key as lowercase hex (the name the blocklist API always had)."""
        return self.key.hex()


class KeySet:
    """An immutable set of `size`-byte keys. A lookup picks the shard and bisects it."""

    __slots__ = ("_count", "_shards", "_size", "_sources")

    def __init__(
        self, shards: list[_Shard] | None = None, *, size: int = 32, sources: tuple[str, ...] = ()
    ) -> None:
        """`shards`: 256 of them, as `KeySetBuilder` makes them (sorted, no duplicates)."""
        self._size = size
        self._shards = shards if shards is not None else [_EMPTY] * 256
        self._sources = sources
        if len(self._shards) != 256:
            raise ValueError(f"a key set has 256 shards, not {len(self._shards)}")
        self._count = sum(len(s.keys) // size for s in self._shards)

    @classmethod
    def of(cls, entries: Mapping[bytes, str | None], *, size: int = 32) -> KeySet:
        """From raw keys and labels (tests, small lists)."""
        builder = KeySetBuilder(size)
        for key, label in entries.items():
            builder.add(key, label, "-", 0)
        return builder.build([])

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key_hex: object) -> bool:
        return isinstance(key_hex, str) and self._find(_unhex(key_hex)) is not None

    def __eq__(self, other: object) -> bool:
        """Same keys and labels (where they came from is not compared: a renamed file changes nothing)."""
        if not isinstance(other, KeySet) or other._size != self._size:
            return False
        return all(
            (a.keys, a.labels, a.ends) == (b.keys, b.labels, b.ends)
            for a, b in zip(self._shards, other._shards, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def nbytes(self) -> int:
        """What the entries take: keys, labels, their offsets and source indices."""
        return sum(s.nbytes for s in self._shards)

    def match(self, key_hex: str) -> KeyMatch | None:
        """The entry for a key given as hex (any case), or None if it is not listed."""
        return self.match_key(_unhex(key_hex))

    def match_key(self, key: bytes) -> KeyMatch | None:
        found = self._find(key)
        if found is None:
            return None
        shard, i = found
        return KeyMatch(key, shard.label(i), self._sources[shard.sources[i]] if self._sources else "-")

    def _find(self, key: bytes) -> tuple[_Shard, int] | None:
        if len(key) != self._size:
            return None
        shard = self._shards[key[0]]
        records = _Records(shard.keys, self._size)
        i = bisect.bisect_left(records, key)
        return (shard, i) if i < len(records) and records[i] == key else None


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


class _Bucket:
    """The entries of one leading byte while parsing: fixed-size chunks (a growing buffer per byte would
    fragment the heap), and each entry's index in parse order."""

    __slots__ = ("chunks", "fill", "indices", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks: list[bytearray] = []
        self.fill = _CHUNK_ENTRIES
        self.indices = array.array("I")

    def add(self, key: bytes, index: int) -> None:
        if self.fill == _CHUNK_ENTRIES:
            self.chunks.append(bytearray(_CHUNK_ENTRIES * self.size))
            self.fill = 0
        self.chunks[-1][self.fill * self.size : (self.fill + 1) * self.size] = key
        self.fill += 1
        self.indices.append(index)

    def take(self) -> bytes:
        """The keys in order of arrival; the chunks are freed."""
        data = b"".join(self.chunks)[: len(self.indices) * self.size]
        self.chunks.clear()
        return data


class KeySetBuilder:
    """Collects keys from one or more sources, then sorts them into a `KeySet`, warning of duplicates.
    Each leading byte's entries are sorted and packed on their own, and their parse chunks freed, so the
    peak stays near the parsed list plus one shard."""

    def __init__(self, size: int = 32, kind: str = "sha256", *, shown_keys: bool = True) -> None:
        self.size = size
        self.kind = kind
        self._shown_keys = shown_keys  # False: the key is a hash of the entry, meaningless in a warning
        self._buckets = [_Bucket(size) for _ in range(256)]
        self._origins = array.array("Q")  # per entry, in parse order: (source index << 32) | line
        self._label_blob = bytearray()
        self._label_ends = array.array("I")  # per entry: where its label ends in the blob
        self._sources: list[str] = []
        self._source_index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._origins)

    def add(self, key: bytes, label: str | None, source: str, line: int) -> None:
        if len(key) != self.size:
            raise ValueError(f"a {self.kind} key has {self.size} bytes, not {len(key)}")
        index = self._source_index.get(source)
        if index is None:
            index = self._source_index[source] = len(self._sources)
            self._sources.append(source)
        self._buckets[key[0]].add(key, len(self._origins))
        self._origins.append((index << 32) | line)
        if label:
            self._label_blob += label.encode("utf-8")
        self._label_ends.append(len(self._label_blob))

    def build(self, issues: list[Issue]) -> KeySet:
        """The sorted set; a warning goes to `issues` for each duplicate (the first occurrence wins).
        The builder is empty afterwards."""
        shards = [self._shard(bucket, issues) for bucket in self._buckets]
        sources = tuple(self._sources)
        self._buckets = [_Bucket(self.size) for _ in range(256)]
        self._origins, self._label_blob, self._label_ends = array.array("Q"), bytearray(), array.array("I")
        self._sources, self._source_index = [], {}
        return KeySet(shards, size=self.size, sources=sources)

    def _shard(self, bucket: _Bucket, issues: list[Issue]) -> _Shard:
        data, indices, size = bucket.take(), bucket.indices, self.size
        if not data:
            return _EMPTY
        order = sorted(range(len(indices)), key=lambda j: data[j * size : (j + 1) * size])
        keys, labels, ends, sources = bytearray(), bytearray(), array.array("I"), array.array("I")
        blob, blob_ends = self._label_blob, self._label_ends
        previous = b""
        for j in order:  # stable: equal keys come in parse order, the first one is kept
            key = data[j * size : (j + 1) * size]
            i = indices[j]
            origin = self._origins[i]
            if key == previous:
                source, line = self._sources[origin >> 32], origin & 0xFFFFFFFF
                what = f"{self.kind} {key.hex()}" if self._shown_keys else self.kind
                issues.append(warning(source, line or None, f"duplicate {what}, first entry kept"))
                continue
            previous = key
            keys += key
            labels += blob[blob_ends[i - 1] if i else 0 : blob_ends[i]]
            ends.append(len(labels))
            sources.append(origin >> 32)
        bucket.indices = array.array("I")
        return _Shard(bytes(keys), bytes(labels), ends if labels else array.array("I"), sources)
