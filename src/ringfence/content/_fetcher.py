"""The client's HTTP fetcher: tuf's FetcherInterface with a gap timeout AND a whole-download deadline.

tuf bounds every download's length (UpdaterConfig's max sizes, a target's signed length); its default
fetcher bounds only the gap between bytes, so a server that drips a byte just inside that gap holds the
client for ever. Here each download also has a deadline on an injected monotonic clock, checked after
every read (each read waits at most `socket_timeout_s`). Content encodings are never decoded: what is
counted against the limits is what came over the wire, so a compression bomb is just a large response.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

CHUNK_BYTES = 64 << 10


class BoundedFetcher(FetcherInterface):
    def __init__(
        self,
        socket_timeout_s: float = 10.0,
        download_deadline_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        user_agent: str = "ringfence-content",
    ) -> None:
        self.socket_timeout_s = socket_timeout_s
        self.download_deadline_s = download_deadline_s
        self._clock = clock
        self._pool = urllib3.PoolManager(headers={"User-Agent": user_agent})
        self.last_url = ""  # what the last refusal was about: tuf verifies each file right after fetching it

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.last_url = url
        deadline = self._clock() + self.download_deadline_s
        try:
            response = self._pool.request(
                "GET",
                url,
                preload_content=False,
                decode_content=False,
                redirect=False,
                retries=urllib3.Retry(total=1, redirect=0, raise_on_redirect=False),
                timeout=urllib3.Timeout(connect=self.socket_timeout_s, read=self.socket_timeout_s),
            )
        except urllib3.exceptions.MaxRetryError as e:
            if isinstance(e.reason, urllib3.exceptions.NewConnectionError):  # also a TimeoutError
                why = str(e.reason).rpartition("Failed to establish a new connection: ")[2]
                raise exceptions.DownloadError(f"{url}: cannot connect: {why}") from e
            if isinstance(e.reason, urllib3.exceptions.TimeoutError):
                raise exceptions.SlowRetrievalError(
                    f"{url}: no answer within {self.socket_timeout_s:g} s"
                ) from e
            raise exceptions.DownloadError(f"{url}: cannot connect: {e.reason}") from e
        if response.status >= 300:
            response.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return self._chunks(url, response, deadline)

    def _chunks(self, url: str, response: urllib3.BaseHTTPResponse, deadline: float) -> Iterator[bytes]:
        try:
            while chunk := response.read1(CHUNK_BYTES, decode_content=False):
                if self._clock() > deadline:
                    raise exceptions.SlowRetrievalError(
                        f"{url}: not complete within {self.download_deadline_s:g} s"
                    )
                yield chunk
        except (urllib3.exceptions.TimeoutError, urllib3.exceptions.ReadTimeoutError) as e:
            raise exceptions.SlowRetrievalError(f"{url}: stalled for {self.socket_timeout_s:g} s") from e
        except urllib3.exceptions.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: broken response: {e}") from e
        finally:
            response.close()  # never hand a half-read connection back to the pool
