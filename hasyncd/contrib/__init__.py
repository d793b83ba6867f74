"""Reference data-plane adapters that run next to hasyncd (not part of the daemon).

``esp`` is the ESP packet transform and RFC 4303 anti-replay window (no I/O),
``espd`` the asyncio userspace ESP-in-UDP endpoint built on it, ``esppeer`` and ``espflow``
the scapy peer and failover harness that the lab and the tests share.
"""
