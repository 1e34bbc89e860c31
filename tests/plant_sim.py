"""Running the plant simulator inside a test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from collector.config import LoadedPlant
from collector.simulator import PlantSimulator


@contextlib.asynccontextmanager
async def serving(plant: LoadedPlant, *, serial_ports: dict[str, str] | None = None,
                  clock: Callable[[], float] | None = None,
                  timeout_s: float = 10.0) -> AsyncIterator[PlantSimulator]:
    """Serve the plant's devices until the block ends; yields once every endpoint is up."""
    kwargs = {} if clock is None else {"clock": clock}
    simulator = PlantSimulator(plant=plant, serial_ports=serial_ports, **kwargs)
    task = asyncio.create_task(simulator.serve(), name="simulator")
    ready = asyncio.create_task(simulator.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # the simulator's own error
        task.cancel()
        raise TimeoutError(f"the simulator did not come up within {timeout_s} s")
    try:
        yield simulator
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
