"""The costly part of `stackline verify`, on every core: each stored block's Ed25519 signature
against its collector's enrolled key, and SHA-256 of its payload.

Ed25519 is most of an audit's cost. libsodium releases the GIL, but in threads of one process
the checks still queue for it behind the chain walk, which is Python, so once a ledger is large
enough to be worth starting them (PROCESS_POOL_AFTER_ROWS), the chunks go to worker processes,
one per CPU (at most MAX_WORKER_PROCESSES), that hold the enrolled keys. The verdict does not
depend on where a chunk was checked: both run `check_rows`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import multiprocessing
import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from gateway.errors import SignatureWorkersLost
from proto.errors import UnacceptableKeyError, VerificationError
from proto.wire import Verifier

__all__ = ["MAX_WORKER_PROCESSES", "PROCESS_POOL_AFTER_ROWS", "RowCheck", "RowChecker",
           "RowToCheck", "check_rows", "verifiers_of", "worker_processes"]

PROCESS_POOL_AFTER_ROWS: Final = 8192
"""Rows checked in threads of this process before the worker processes take over (starting
them costs about a tenth of a second: the price of checking some 1,500 signatures here)."""

MAX_WORKER_PROCESSES: Final = 4
"""More would wait on the chain walk, which runs in the main process (about 30,000 blocks/s
here), and each costs an interpreter's memory."""

RowToCheck = tuple[str, str, bytes, bytes]
"""(collector_id, key_id, payload, signature) of one stored block."""

KeyTable = Mapping[tuple[str, str], bytes]
"""(collector_id, key_id) -> the enrolled Ed25519 public key."""


@dataclass(frozen=True, slots=True)
class RowCheck:
    """What `check_rows` finds of one row: why its signature fails (None when it holds) and
    SHA-256 of its payload (recomputed, never read from the ledger)."""

    signature_problem: str | None
    payload_hash: bytes


def verifiers_of(keys: KeyTable) -> dict[tuple[str, str], Verifier | None]:
    """A verifier per enrolled key (None for a key libsodium would not accept)."""
    verifiers: dict[tuple[str, str], Verifier | None] = {}
    for name, public_key in keys.items():
        try:
            verifiers[name] = Verifier(public_key=public_key)
        except UnacceptableKeyError:
            verifiers[name] = None
    return verifiers


def check_rows(verifiers: Mapping[tuple[str, str], Verifier | None],
               rows: Iterable[RowToCheck]) -> list[RowCheck]:
    """Per row, its signature verdict and payload hash. Pure and thread-safe."""
    checks: list[RowCheck] = []
    sha256 = hashlib.sha256
    for collector_id, key_id, payload, signature in rows:
        verifier = verifiers.get((collector_id, key_id))
        problem: str | None = None
        if verifier is None:
            problem = f"key {key_id} is not an enrolled key of {collector_id}"
        else:
            try:
                verifier.verify(payload, signature)
            except VerificationError as exc:
                problem = exc.detail
        checks.append(RowCheck(problem, sha256(payload).digest()))
    return checks


def worker_processes() -> int:
    """How many worker processes: one per CPU this process may run on (its affinity, not the
    machine's count), at most MAX_WORKER_PROCESSES."""
    return max(1, min(MAX_WORKER_PROCESSES, len(os.sched_getaffinity(0))))


_worker_verifiers: dict[tuple[str, str], Verifier | None] = {}
"""The enrolled keys, in a worker process (set by `_start_worker`)."""


def _start_worker(keys: dict[tuple[str, str], bytes]) -> None:
    # Ctrl-C is the main process's to handle (it stops the workers); a worker would only print
    # a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_verifiers.clear()
    _worker_verifiers.update(verifiers_of(keys))


def _check_in_worker(rows: list[RowToCheck]) -> list[RowCheck]:
    return check_rows(_worker_verifiers, rows)


def _lost(exc: BaseException) -> SignatureWorkersLost:
    return SignatureWorkersLost(
        f"a worker process checking signatures stopped ({exc or type(exc).__name__}): the audit "
        "is incomplete and gives no verdict; run it again, with more free memory if the system "
        "stopped it")


async def _lost_workers_named(checking: asyncio.Future[list[RowCheck]]) -> list[RowCheck]:
    try:
        return await checking
    except concurrent.futures.BrokenExecutor as exc:
        raise _lost(exc) from exc


class RowChecker:
    """Checks chunks of rows off the event loop: the first `in_process_rows` (by default
    PROCESS_POOL_AFTER_ROWS) in a thread of this process, the rest in worker processes, one per
    CPU it may use, at most MAX_WORKER_PROCESSES (started on first use, with the "spawn" method:
    safe beside the ledger's threads). Use it as a context manager: it stops its workers."""

    def __init__(self, keys: KeyTable, *, in_process_rows: int | None = None) -> None:
        self._keys = dict(keys)
        self._verifiers = verifiers_of(self._keys)
        self._in_process_rows = (PROCESS_POOL_AFTER_ROWS if in_process_rows is None
                                 else in_process_rows)
        self._submitted = 0
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="verify-signatures")
        self._processes: concurrent.futures.ProcessPoolExecutor | None = None

    def __repr__(self) -> str:
        return (f"RowChecker(keys={len(self._keys)}, submitted={self._submitted}, "
                f"processes={self._processes is not None})")

    @property
    def uses_processes(self) -> bool:
        """True once chunks have gone to worker processes."""
        return self._processes is not None

    def submit(self, rows: Sequence[RowToCheck]) -> asyncio.Future[list[RowCheck]]:
        """Start checking `rows`; the future gives a RowCheck per row, in order, or raises
        SignatureWorkersLost when a worker process stopped."""
        loop = asyncio.get_running_loop()
        self._submitted += len(rows)
        if self._submitted <= self._in_process_rows:
            return loop.run_in_executor(self._threads, check_rows, self._verifiers, rows)
        try:
            if self._processes is None:
                self._processes = concurrent.futures.ProcessPoolExecutor(
                    max_workers=worker_processes(),
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker, initargs=(self._keys,))
            checking = loop.run_in_executor(self._processes, _check_in_worker, list(rows))
        except (OSError, concurrent.futures.BrokenExecutor) as exc:
            raise _lost(exc) from exc
        return asyncio.ensure_future(_lost_workers_named(checking))

    def close(self) -> None:
        """Stop the threads and worker processes (pending checks are cancelled)."""
        self._threads.shutdown(wait=True, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RowChecker:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
