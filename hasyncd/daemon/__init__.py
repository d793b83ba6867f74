"""The asyncio shell around the sans-IO core: sockets, the timer, the local API, hooks, metrics."""
