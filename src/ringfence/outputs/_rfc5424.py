"""RFC 5424 syslog messages for events and findings: pure, no I/O.

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [ringfence@32473 ...][meta sequenceId="N"] BOM MSG

- PRI: facility * 8 + the syslog severity of the event's OCSF `severity_id` (`SYSLOG_SEVERITY`). Nothing
  is ever sent as emergency (0): many hosts broadcast those to every terminal.
- TIMESTAMP: the event's own wall time, RFC 3339 in UTC with milliseconds.
- HOSTNAME: the agent's host id, PRINTUSASCII only (anything else becomes `_`), at most 255 octets.
- APP-NAME `ringfence`, PROCID the agent's pid, MSGID the event kind (`finding`, `authentication`, ...).
- STRUCTURED-DATA: our element (`SD_ID`) with what a SIEM filters on (the finding's uid, rule, OCSF
  severity, extension, ATT&CK techniques and tactics), each value cleaned of control characters, capped
  at `SD_VALUE_MAX` octets and with `"`, `\\` and `]` escaped as section 6.3.3 requires; then the
  IANA-registered `meta` element whose `sequenceId` numbers the messages of one agent run (RFC 5424
  section 7.3.1), so that a receiver sees a gap where a message was lost.
- MSG: the event's OCSF JSON (the same document as in findings.jsonl), UTF-8 with a BOM. Past
  `max_bytes` only the MSG is cut (on a character boundary); `truncated="N"` in our element then gives
  the JSON's full length in octets. The header and the structured data are never cut.

The SD-ID's enterprise number is 32473, which RFC 5612 reserves for documentation: Ringfence has no
IANA Private Enterprise Number of its own yet. Registering one (free, at IANA) and changing `PEN` is
the practice to follow before a release that SIEM rules will key on.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import msgspec

from ringfence.events import DetectionFinding, Event, event_kind, to_ocsf, valid_text

PEN = 32473  # RFC 5612's documentation number; see the module docstring
SD_ID = f"ringfence@{PEN}"
APP_NAME = "ringfence"
BOM = b"\xef\xbb\xbf"
SD_VALUE_MAX = 256  # octets of one escaped PARAM-VALUE
MIN_MAX_BYTES = 2048  # RFC 5426 and 5425: a receiver SHOULD take 2048 octets (and MUST take 480)
MAX_MAX_BYTES = 65507  # the largest UDP payload over IPv4
DEFAULT_MAX_BYTES = 8192  # what rsyslog takes by default, and RFC 5425 says receivers SHOULD take

FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "audit": 13,  # RFC 5424's "log audit"
    "alert": 14,  # RFC 5424's "log alert"
    "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
DEFAULT_FACILITY = "authpriv"  # findings name users, command lines, paths: keep them out of world logs

# syslog severity of an OCSF severity_id: the inverse of how log lines' severities become OCSF ones
# (events/_codec_detection.py), never 0 (emergency: "system is unusable", broadcast by many hosts)
SYSLOG_SEVERITY: dict[int, int] = {
    0: 5,  # Unknown -> notice
    1: 6,  # Informational -> informational
    2: 5,  # Low -> notice
    3: 4,  # Medium -> warning
    4: 3,  # High -> error
    5: 2,  # Critical -> critical
    6: 1,  # Fatal -> alert
    99: 5,  # Other -> notice
}


def parse_facility(name: str) -> int:
    """The facility code of a name (`authpriv`, `local4`). Raises ValueError naming the known ones."""
    if name == "security":
        raise ValueError(
            "'security' is ambiguous (auth, 4, on Linux; 13 on the BSDs): say auth, authpriv or audit"
        )
    if name not in FACILITIES:
        raise ValueError(f"unknown facility {name!r}; one of {', '.join(FACILITIES)}")
    return FACILITIES[name]


def syslog_severity(ocsf_severity_id: int) -> int:
    return SYSLOG_SEVERITY.get(ocsf_severity_id, 5)


def header_field(text: str, limit: int) -> str:
    """A header field (HOSTNAME, APP-NAME, ...): PRINTUSASCII only, at most `limit` octets; "-" if empty."""
    clean = "".join(c if "!" <= c <= "~" else "_" for c in text[:limit])
    return clean or "-"


def timestamp(time_ns: int) -> str:
    """RFC 3339 in UTC with milliseconds; "-" (NILVALUE) for a time that is not one."""
    seconds, rest = divmod(time_ns, 1_000_000_000)
    try:
        when = time.gmtime(seconds)
    except (OverflowError, OSError, ValueError):
        return "-"
    if not 1 <= when.tm_year <= 9999:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", when) + f".{rest // 1_000_000:03d}Z"


def _escaped(c: str) -> str:
    if c < " " or "\x7f" <= c <= "\x9f":
        return "\ufffd"  # a control character: no receiver keeps it well, and the MSG has the original
    return "\\" + c if c in '"\\]' else c


def param_value(text: str, limit: int = SD_VALUE_MAX) -> str:
    """`text` as a PARAM-VALUE: valid UTF-8 (a non-UTF-8 name's bytes as \\xNN), control characters as
    U+FFFD, `"`, `\\` and `]` escaped, whole characters up to `limit` octets."""
    out: list[str] = []
    size = 0
    for c in valid_text(text):
        piece = _escaped(c)
        size += len(piece.encode())
        if size > limit:
            break
        out.append(piece)
    return "".join(out)


def sd_element(sd_id: str, params: list[tuple[str, str]]) -> str:
    """`[SD-ID name="value" ...]`; the names are ours (safe), the values escaped here."""
    return "[" + " ".join([sd_id, *(f'{name}="{param_value(value)}"' for name, value in params)]) + "]"


def _joined(items: tuple[str, ...], limit: int = SD_VALUE_MAX) -> str:
    """Comma-separated, whole items only, within `limit` octets."""
    out = ""
    for item in items:
        candidate = f"{out},{item}" if out else item
        if len(candidate.encode()) > limit:
            break
        out = candidate
    return out


def _params(event: Event, doc: dict[str, Any]) -> list[tuple[str, str]]:
    severity = str(doc.get("severity", ""))
    if not isinstance(event, DetectionFinding):
        return [
            ("uid", event.header.id),
            ("class_uid", str(doc.get("class_uid", ""))),
            ("severity", severity),
        ]
    params = [("uid", event.header.id)]
    params += [("rule", event.rule)] if event.rule else []
    params += [("severity", severity), ("extension", event.source)]
    params += [("techniques", _joined(event.techniques))] if event.techniques else []
    params += [("tactics", _joined(event.tactics))] if event.tactics else []
    return params


class Rfc5424Formatter:
    """Formats events as RFC 5424 messages of at most `max_bytes` octets. One per sink; `format` may be
    called from one thread at a time (the sequence counter is its own)."""

    def __init__(self, *, facility: int, hostname: str, procid: int, max_bytes: int = DEFAULT_MAX_BYTES):
        if not 0 <= facility <= 23:
            raise ValueError(f"facility must be 0..23, got {facility}")
        if not MIN_MAX_BYTES <= max_bytes <= MAX_MAX_BYTES:
            raise ValueError(f"max_bytes must be {MIN_MAX_BYTES}..{MAX_MAX_BYTES}, got {max_bytes}")
        self.facility = facility
        self.hostname = header_field(hostname, 255)
        self.procid = header_field(str(procid), 128)
        self.max_bytes = max_bytes
        self._json = msgspec.json.Encoder()
        self._sequence = itertools.count(1)

    def next_sequence(self) -> int:
        """1, 2, ... 2147483647, then 1 again (RFC 5424 section 7.3.1)."""
        return (next(self._sequence) - 1) % 2147483647 + 1

    def format(self, event: Event, sequence: int | None = None) -> tuple[bytes, bool]:
        """The message, and whether its MSG was cut to fit `max_bytes`."""
        doc = to_ocsf(event)
        try:
            body = self._json.encode(doc)
        except UnicodeEncodeError:  # a name that was not UTF-8: cleaned only then, as OcsfEncoder does
            body = self._json.encode(valid_text(doc))
        pri = self.facility * 8 + syslog_severity(int(doc.get("severity_id", 0)))
        kind = header_field(str(event_kind(event)), 32)
        head = f"<{pri}>1 {timestamp(event.header.time_ns)} {self.hostname} {APP_NAME} {self.procid} {kind} "
        seq = self.next_sequence() if sequence is None else sequence
        params = _params(event, doc)
        meta = sd_element("meta", [("sequenceId", str(seq))])
        message = (head + sd_element(SD_ID, params) + meta).encode() + b" " + BOM + body
        if len(message) <= self.max_bytes:
            return message, False
        prefix = (head + sd_element(SD_ID, [*params, ("truncated", str(len(body)))]) + meta).encode()
        room = self.max_bytes - len(prefix) - 1 - len(BOM)
        if room <= 0:  # cannot happen within MIN_MAX_BYTES (the SD is bounded), but never send more
            return prefix, True
        cut = body[:room].decode("utf-8", "ignore").encode()  # a partial character at the end goes
        return prefix + b" " + BOM + cut, True
