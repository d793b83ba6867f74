"""Sans-IO cores: election, replication and the node state machine.

Nothing in this package imports asyncio, opens a socket or reads a clock.
Inputs carry the time; outputs are bytes to send, events and the next timer.
"""
