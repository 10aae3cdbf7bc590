"""An asyncio application embedding the kernel.

    python examples/asyncio_app.py [DATA_DIR]

nerve runs on trio; `nerve.aio.open_kernel` runs it as a guest on the
asyncio event loop (`trio.lowlevel.start_guest_run`), so an asyncio program
(a web server, a bot...) triggers runs and awaits their outcomes with plain
``await``. The workflow itself is trio code; it calls the asyncio side with
`nerve.aio.run_in_asyncio` (here an asyncio "HTTP client" that only sleeps).
Leaving the ``async with`` block, or cancelling the task inside it, drains
the kernel: the trio run is over when the block exits.
"""

from __future__ import annotations

import asyncio
import sys

import nerve
import nerve.aio

app = nerve.App()


async def fetch_price(symbol: str) -> float:
    """asyncio code, as an aiohttp call would be."""
    await asyncio.sleep(0.05)
    return round(100 + sum(map(ord, symbol)) % 50 + 0.25, 2)


@app.workflow("quote", concurrency=3)
async def quote(run: nerve.Run) -> dict[str, float]:
    """Trio code: runs in the kernel's nursery, calls asyncio to fetch."""
    symbol = run.payload["symbol"]
    price: float = await run.step(
        "fetch", nerve.aio.run_in_asyncio, fetch_price, symbol
    )
    await run.say("assistant", f"{symbol} trades at {price}")
    return {symbol: price}


async def main(data_dir: str) -> None:
    async with nerve.aio.open_kernel(app, data_dir) as kernel:
        # An asyncio "request handler" per symbol, all at once.
        async def handle_request(symbol: str) -> nerve.Outcome:
            handle = await kernel.trigger("quote", {"symbol": symbol})
            return await handle.wait()

        outcomes = await asyncio.gather(
            *(handle_request(s) for s in ("ACME", "INITECH", "HOOLI", "UMBRELLA"))
        )
        for o in outcomes:
            print(f"{o.run_id}  {o.status:<10} {o.result}")

        # A client that gives up: cancelling the asyncio task cancels its wait
        # on the trio side; the run itself goes on.
        handle = await kernel.trigger("quote", {"symbol": "SLOWCO"})
        waiting = asyncio.create_task(handle.wait())
        await asyncio.sleep(0.01)
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            outcome = await handle.wait()
            print(f"a client stopped waiting for {handle.run_id}: {outcome.status}")

        completed = await kernel.runs(workflow="quote", status="completed")
        print(f"{len(completed)} completed quote runs in {kernel.data_dir}")
    print("the kernel drained and the trio guest run ended")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "data"))
