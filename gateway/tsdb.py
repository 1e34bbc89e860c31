"""The time-series store behind one small interface; the only module that imports influxdb_client.

`TimeSeriesWriter` takes line-protocol lines (gateway/lineproto.py makes them) and either stores
all of them or raises: `TimeSeriesUnavailable` (with `retry_after_s`) when the same request may
succeed later, `TimeSeriesRejected` when the store refuses the lines themselves. `InfluxWriter`
speaks the InfluxDB v2 write API (`POST /api/v2/write?org=&bucket=&precision=ms`) through
influxdb_client's synchronous write API, in a worker thread of its own, so one request is in
flight at a time and the event loop never blocks on the network. InfluxDB 2.x and 3.x and
VictoriaMetrics all accept that API.

A write is idempotent in the store: the same series and timestamp written twice keep one point
(InfluxDB overwrites; VictoriaMetrics with `-dedup.minScrapeInterval=1ms` keeps one), which is
what lets the sink send a request again after an error without counting anything twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import urllib3.exceptions
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS

from gateway.errors import TimeSeriesRejected, TimeSeriesUnavailable

__all__ = ["REFUSED_RETRY_AFTER_S", "InfluxWriter", "TimeSeriesWriter", "point_helper_line"]

# how long to wait before the next attempt when the server does not say (Retry-After)
UNREACHABLE_RETRY_AFTER_S = 1.0
OVERLOADED_RETRY_AFTER_S = 5.0
# wrong token, missing bucket or organization: an operator has to act; try again, slowly
REFUSED_RETRY_AFTER_S = 30.0
_REFUSED = (401, 403, 404)
_OVERLOADED = (408, 429, 500, 502, 503, 504)


class TimeSeriesWriter(Protocol):
    """Where the sink writes line protocol."""

    async def write(self, lines: Sequence[str]) -> None:
        """Store every line, or raise TimeSeriesUnavailable / TimeSeriesRejected."""
        ...

    async def probe(self) -> None:
        """Send a write without lines: raises as `write` does when the store refuses requests
        as such (credentials, org, bucket), whatever the lines."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


def _retry_after_s(header: str | None, default_s: float) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or the default."""
    if not header:
        return default_s
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return default_s
    return max(0.0, when.timestamp() - time.time())


class InfluxWriter:
    """InfluxDB v2 write API through influxdb_client (synchronous writes in one worker thread)."""

    def __init__(self, *, url: str, bucket: str, org: str | None = None, token: str | None = None,
                 timeout_s: float = 10.0, ca_file: str | None = None) -> None:
        self.url = url
        self.bucket = bucket
        self.org = org
        self.timeout_s = timeout_s
        # retries=False: every failure comes back to the sink, which owns the retry policy (and
        # replays after an outage); urllib3 retrying underneath would hide outages from it
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout_s * 1000),
                                      ssl_ca_cert=ca_file, retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tsdb-write")
        self._token_set = bool(token)

    def __repr__(self) -> str:  # never print the token
        return (f"InfluxWriter(url={self.url!r}, org={self.org!r}, bucket={self.bucket!r}, "
                f"token={'set' if self._token_set else 'none'})")

    async def write(self, lines: Sequence[str]) -> None:
        """Send the lines as one request (precision ms)."""
        if not lines:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._write, "\n".join(lines))

    async def probe(self) -> None:
        """An empty write (InfluxDB and VictoriaMetrics answer 204 when they take requests)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._write, "")

    def _write(self, body: str) -> None:
        where = f"time-series store {self.url}"
        try:
            # the client insists on an org; InfluxDB 3 and VictoriaMetrics ignore it
            self._write_api.write(bucket=self.bucket, org=self.org or "", record=body,
                                  write_precision=WritePrecision.MS)
        except InfluxDBError as exc:  # the server answered with an error status
            status = int(getattr(exc, "status", 0) or 0)
            message = f"{where} answered {status or 'an error'}: {exc.message}"
            if status in _REFUSED:
                raise TimeSeriesUnavailable(
                    f"{message} (check the url, org, bucket and token)",
                    retry_after_s=REFUSED_RETRY_AFTER_S) from exc
            if status in _OVERLOADED or status == 0:
                raise TimeSeriesUnavailable(message, retry_after_s=_retry_after_s(
                    exc.retry_after, OVERLOADED_RETRY_AFTER_S)) from exc
            raise TimeSeriesRejected(message, status=status) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # refused, reset, timed out, name not resolved, TLS failure
            raise TimeSeriesUnavailable(f"{where} is unreachable: {type(exc).__name__}: {exc}",
                                        retry_after_s=UNREACHABLE_RETRY_AFTER_S) from exc

    async def close(self) -> None:
        """Wait for a request in flight, then close the client."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._executor.shutdown, True)
        self._write_api.close()
        self._client.close()


def point_helper_line(measurement: str, tags: Mapping[str, str | None],
                      fields: Mapping[str, float | int], time_ms: int) -> str:
    """The same line through influxdb_client's `Point` helper: the reference the line formatter
    is tested and benchmarked against (about 12x slower here: bench/sink.py)."""
    point = Point(measurement)
    for key, value in tags.items():
        if value:
            point.tag(key, value)
    for key, field_value in fields.items():
        point.field(key, field_value)
    point.time(time_ms, WritePrecision.MS)
    return str(point.to_line_protocol())
