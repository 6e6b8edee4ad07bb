"""Vaccination stations in a parking lot: over 100 hours of asyncio.sleep, run in simulated time.

Our version of the simulation in the asyncio tutorial "Concurrent Task Execution in Python With
Asyncio Is A Breeze" (HackerNoon, 2021), at its realistic rates: three stations work through 100
boxes of 100 doses, each shot taking one to three minutes. A courier brings the boxes one at a
time from the depot to a fridge at the site that holds a few; a station that finishes a box takes
the next one from the fridge, waiting when it is empty. The stations, the courier and a
supervisor who reports every 12 hours are ordinary asyncio tasks sharing one seeded random
generator, so the run is fully determined by the seed, and any change in the order things happen
in changes the output.

On stock asyncio it runs in pseudo real time: over 100 hours::

    python examples/vaccination.py [--seed N]

Unchanged, on oxloop's virtual clock, it prints the same lines in well under a second::

    python -m oxloop --virtual-clock examples/vaccination.py [--seed N]

Every line starts with the simulated time since the start (hours:minutes:seconds, to the
microsecond), read from ``loop.time()``. All random durations are whole microseconds, so any
ideal clock with microsecond resolution or better prints exactly the same text.
"""

import argparse
import asyncio
import random
from dataclasses import dataclass

STATIONS = 3
BOXES = 100
SHOTS_PER_BOX = 100
SHOT_SECONDS = (60, 180)  # one to three minutes a shot
TRIP_SECONDS = (40 * 60, 100 * 60)  # the courier's round trip for one box
FRIDGE_BOXES = 3  # boxes the fridge at the site holds
REPORT_EVERY = 12 * 3600
DEFAULT_SEED = 2021


def hms(seconds: float) -> str:
    """``seconds`` as hours:minutes:seconds.microseconds."""
    micros = round(seconds * 1_000_000)
    whole, micros = divmod(micros, 1_000_000)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:3d}:{minutes:02d}:{secs:02d}.{micros:06d}"


@dataclass
class Station:
    number: int
    boxes: int = 0
    shots: int = 0
    busy: float = 0.0  # seconds spent giving shots
    waiting: float = 0.0  # seconds spent waiting for a box


class Site:
    """What the tasks of the simulation share: the clock, the random generator, the fridge."""

    def __init__(self, seed: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.rng = random.Random(seed)
        self.fridge: asyncio.Queue[int | None] = asyncio.Queue(maxsize=FRIDGE_BOXES)
        self.stations = [Station(n) for n in range(1, STATIONS + 1)]
        self.delivered = 0  # boxes the courier has put in the fridge
        self.opened = 0  # boxes the stations have taken out

    def now(self) -> float:
        return self.loop.time() - self.start

    def log(self, message: str) -> None:
        print(f"{hms(self.now())}  {message}")

    def draw(self, bounds: tuple[int, int]) -> float:
        """A random duration within ``bounds`` seconds, in whole microseconds."""
        low, high = bounds
        return self.rng.randint(low * 1_000_000, high * 1_000_000) / 1_000_000

    @property
    def in_fridge(self) -> int:
        return self.delivered - self.opened

    @property
    def shots(self) -> int:
        return sum(station.shots for station in self.stations)

    async def courier(self) -> None:
        """Fetch the boxes one trip at a time; a full fridge makes the courier wait."""
        for box in range(1, BOXES + 1):
            await asyncio.sleep(self.draw(TRIP_SECONDS))
            await self.fridge.put(box)
            self.delivered += 1
        self.log(f"courier:   all {BOXES} boxes delivered")
        for _ in self.stations:
            await self.fridge.put(None)  # one "no more boxes" note per station

    async def station(self, station: Station) -> None:
        """Open the next box from the fridge and give its shots, until there are no more."""
        while True:
            if self.fridge.empty():
                self.log(f"station {station.number}: the fridge is empty, waiting")
            asked = self.now()
            box = await self.fridge.get()
            station.waiting += self.now() - asked
            if box is None:
                return
            self.opened += 1
            opened = self.now()
            self.log(
                f"station {station.number}: opens box {box:3d} "
                f"({self.in_fridge} left in the fridge)"
            )
            for _ in range(SHOTS_PER_BOX):
                await asyncio.sleep(self.draw(SHOT_SECONDS))
                station.shots += 1
            took = self.now() - opened
            station.busy += took
            station.boxes += 1
            self.log(
                f"station {station.number}: box {box:3d} done in {hms(took).strip()} "
                f"({station.shots} shots so far)"
            )

    async def supervisor(self) -> None:
        """Report the progress every ``REPORT_EVERY`` seconds."""
        while True:
            await asyncio.sleep(REPORT_EVERY)
            self.log(f"report:    {self.shots} shots given, boxes in the fridge: {self.in_fridge}")


async def main(seed: int = DEFAULT_SEED) -> None:
    site = Site(seed)
    site.log(f"open:      {STATIONS} stations, {BOXES} boxes of {SHOTS_PER_BOX} shots, seed {seed}")
    supervisor = asyncio.create_task(site.supervisor())
    # As in the tutorial, wait for whichever task completes first, and say so when one does.
    names: dict[asyncio.Task[None], str] = {
        asyncio.create_task(site.courier()): "courier",
    }
    for station in site.stations:
        names[asyncio.create_task(site.station(station))] = f"station {station.number}"
    pending = set(names)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in sorted(done, key=names.__getitem__):
            task.result()  # re-raises what went wrong in it
            site.log(f"closed:    {names[task]}")
    supervisor.cancel()

    span = site.now()
    site.log(f"summary:   {site.shots} shots in {hms(span).strip()}")
    for station in site.stations:
        print(
            f"  station {station.number}: {station.boxes:2d} boxes, {station.shots:4d} shots, "
            f"busy {hms(station.busy).strip()}, waited {hms(station.waiting).strip()}, "
            f"{station.busy / max(station.shots, 1):.6f} s a shot"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})"
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args().seed))
