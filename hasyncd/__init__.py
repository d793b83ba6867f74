"""hasyncd: state synchronization for high-availability VPN gateway clusters.

The package is split into a sans-IO core (``hasyncd.wire``, ``hasyncd.core``,
``hasyncd.records``, ``hasyncd.store``) that never touches sockets, clocks or
asyncio, and an asyncio shell (``hasyncd.daemon``) that moves bytes, arms one
timer and serves the local HTTP API.
"""

__version__ = "0.1.0"
