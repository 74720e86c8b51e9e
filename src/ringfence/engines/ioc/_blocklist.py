"""The blocklist format (what `--blocklist` gives): one sha256 per line, an optional label, `#` comments.

    # whole-line comment
    <64 hex digits>                      (any case)
    <64 hex digits>  <label>  # comment  (the label is the rest of the line, used in finding titles)

Blank lines are skipped. A file with any bad line is rejected as a whole, and every bad line is reported
at once (each naming file:line): a half-loaded blocklist would be a silent gap. Duplicates are warnings;
the first occurrence (and its label) wins. It is the sha256 kind of IOC list, kept as it was.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

from ringfence.engines.ioc._indicators import HASH_BYTES, IndicatorProblem, Kind, clean_label, hash_indicator
from ringfence.engines.ioc._issues import ContentError, Issue, error, has_errors
from ringfence.engines.ioc._read import read_lines
from ringfence.engines.ioc._store import KeySet, KeySetBuilder

_SHA256_HEX_DIGITS = 2 * HASH_BYTES[Kind.SHA256]

Blocklist = KeySet
"""A set of sha256 digests with labels (a `KeySet` of 32-byte keys)."""


def BlocklistBuilder() -> KeySetBuilder:  # the class name the blocklist API had
    return KeySetBuilder(HASH_BYTES[Kind.SHA256], "sha256")


@dataclass(frozen=True, slots=True)
class ParseResult:
    blocklist: KeySet
    issues: tuple[Issue, ...]

    @property
    def ok(self) -> bool:
        return not has_errors(self.issues)


def parse_blocklist(data: bytes, source: str) -> ParseResult:
    """Parse a blocklist's bytes. Never raises: every problem is an `Issue` in the result."""
    builder = BlocklistBuilder()
    issues: list[Issue] = []
    parse_lines(builder, (raw.rstrip(b"\r\n") for raw in io.BytesIO(data)), source, issues)
    return ParseResult(builder.build(issues), tuple(issues))


def read_blocklist(path: str, *, max_bytes: int) -> ParseResult:
    """Read and parse one blocklist file; the result's issues are warnings only. Raises `ContentError`
    with every issue if the file is unusable."""
    builder = BlocklistBuilder()
    issues: list[Issue] = []
    read_into(builder, path, path, max_bytes=max_bytes, issues=issues)
    result = ParseResult(builder.build(issues), tuple(issues))
    if not result.ok:
        raise ContentError(result.issues)
    return result


def read_into(builder: KeySetBuilder, path: str, source: str, *, max_bytes: int, issues: list[Issue]) -> None:
    """Stream the blocklist at `path` into `builder`, issues named `source`."""
    read_lines(
        path,
        source,
        max_bytes=max_bytes,
        issues=issues,
        parse=lambda lines: parse_lines(builder, lines, source, issues),
    )


def parse_lines(builder: KeySetBuilder, lines: Iterable[bytes], source: str, issues: list[Issue]) -> None:
    """Add every good line to `builder`, every bad one to `issues`."""
    for number, raw in enumerate(lines, start=1):
        entry = _parse_line(raw, source, number, issues)
        if entry is not None:
            builder.add(entry[0], entry[1], source, number)


def _parse_line(raw: bytes, source: str, number: int, issues: list[Issue]) -> tuple[bytes, str | None] | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        issues.append(error(source, number, f"not UTF-8 (byte {e.start + 1})"))
        return None
    text = text.split("#", 1)[0].strip()
    if not text:
        return None
    fields = text.split(maxsplit=1)
    label = clean_label(fields[1].strip()) if len(fields) == 2 else None
    word = fields[0]
    if len(word) == _SHA256_HEX_DIGITS:
        try:  # the fast path: a million lines per list
            return bytes.fromhex(word), label  # fromhex skips whitespace only, and `word` has none
        except ValueError:
            pass
    try:
        hash_indicator(word, Kind.SHA256)  # raises, saying why
    except IndicatorProblem as e:
        issues.append(error(source, number, str(e)))
    return None
