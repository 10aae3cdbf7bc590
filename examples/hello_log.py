"""Append, read, search and verify events in a nerve log (what `make demo` runs).

python examples/hello_log.py [DATA_DIR]
"""

from __future__ import annotations

import sys

import attrs
import trio

import nerve


@nerve.event("order.placed")
@attrs.frozen
class OrderPlaced:
    order_id: str
    item: str
    quantity: int


async def main(data_dir: str) -> None:
    async with nerve.open_log(data_dir, source="demo") as log:
        start = log.head
        # Concurrent appenders are group-committed: one transaction, one fsync.
        async with trio.open_nursery() as nursery:
            for i, item in enumerate(["espresso", "croissant", "flat white"]):
                order = OrderPlaced(f"o-{start + i}", item, i + 1)
                nursery.start_soon(
                    log.append,
                    f"order-{order.order_id}",
                    [nerve.NewEvent("order.placed", order)],
                )
        note = await log.append(
            "notes", nerve.NewEvent("note", {"text": "the espresso machine hums"})
        )
        print(f"appended up to position {note.last_position}\n")

        print("the last events:")
        async for event in log.read(after=start):
            print(
                f"  {event.position:>4}  {event.stream:<16} {event.type:<14}",
                event.data,
            )

        print("\nsearch 'espresso':")
        for hit in await log.search("espresso"):
            print(f"  {hit.event.position:>4}  {hit.snippet}")

        broken = await log.verify()
        print(f"\nhash chain: {'intact' if broken is None else f'broken at {broken}'}")
        print(log.statistics())


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "data")
