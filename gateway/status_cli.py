"""`stackline status --gateway URL`: every plant's stream at a glance, from the gateway's /status."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["fetch_status", "render_status"]

BAR_WIDTH = 12
BAR_FULL_S = 60.0


def fetch_status(base_url: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """GET BASE/status; OSError (with what to do next) when the gateway cannot be reached."""
    url = base_url.rstrip("/") + "/status"
    if not url.startswith(("http://", "https://")):
        raise OSError(f"{base_url!r} is not an http:// URL of a gateway's HTTP endpoint")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - checked above
            document: dict[str, Any] = json.loads(response.read())
    except urllib.error.URLError as exc:
        raise OSError(f"cannot reach {url}: {exc.reason}; is the gateway running with an "
                      "`http: {listen: ...}` section in its configuration?") from exc
    return document


def _age(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "never"
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _bar(lag_s: float | None) -> str:
    if lag_s is None:
        return ""
    filled = min(BAR_WIDTH * 8, round(lag_s / BAR_FULL_S * BAR_WIDTH * 8))
    blocks = "█" * (filled // 8) + ("▏▎▍▌▋▊▉"[filled % 8 - 1] if filled % 8 else "")
    return blocks.ljust(BAR_WIDTH) + ("▶" if lag_s > BAR_FULL_S else "")


def render_status(document: dict[str, Any]) -> str:
    """An aligned table, one line per collector, then what needs attention."""
    now_ms = int(document.get("time_unix_ms") or time.time() * 1000)
    header = ("collector", "plant", "state", "head", "last block", "lag", "", "buffered", "gaps",
              "quarantined", "sink lag")
    rows: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for entry in document["collectors"]:
        reported = entry.get("reported")
        lag = entry.get("lag_s")
        rows.append((
            entry["collector_id"], entry.get("plant_id") or "?", entry["state"],
            str(entry["chain_head"]), _age(entry.get("last_block_unix_ms"), now_ms),
            "-" if lag is None else f"{lag:.1f}s", _bar(lag),
            "?" if reported is None else str(reported["buffer_blocks"]),
            "?" if reported is None else str(reported["unrecorded_ticks"]),
            str(entry["quarantined"]),
            "-" if entry.get("sink_lag_blocks") is None else str(entry["sink_lag_blocks"]),
        ))
        if reported is None:
            notes.append(f"  {entry['collector_id']}: no health report received by this gateway yet")
            continue
        for device in reported["devices"]:
            if not device["answering"]:
                notes.append(f"  {entry['collector_id']} / {device['device_id']}: not answering "
                             f"({device['consecutive_failures']} failed polls in a row): "
                             f"{device['last_error']}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {3, 7, 8, 9, 10}
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.rjust(widths[i]) if i in numeric and index else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    if len(rows) == 1:
        lines.append("(no collector is enrolled at this gateway)")
    log = document.get("log")
    if log is not None:
        lines.append("")
        checkpoint = ("no checkpoint yet" if log.get("checkpoint_size") is None else
                      f"checkpoint at size {log['checkpoint_size']}, "
                      f"published {_age(log.get('checkpoint_unix_ms'), now_ms)}")
        pending = log.get("pending_blocks") or 0
        lines.append(f"transparency log {log['origin']}: {log['size']} blocks"
                     + (f" ({pending} waiting)" if pending else "") + f", {checkpoint}")
        if log.get("failures"):
            notes.append(f"  transparency log: {log['failures']} failed integrations in a row "
                         "(see the gateway's log)")
    quarantine = document.get("quarantined_by_reason") or {}
    if quarantine:
        lines.append("")
        lines.append("quarantine: " + ", ".join(f"{reason} {count}"
                                                for reason, count in quarantine.items()))
    if notes:
        lines.append("")
        lines.append("needs attention:")
        lines.extend(notes)
    return "\n".join(lines)
