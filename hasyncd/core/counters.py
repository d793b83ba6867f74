"""Every counter the node core keeps, declared once: its label name and its help text.

The core counts with ``Outputs.count(name, label)``; the metrics collector
exports each as ``hasyncd_<name>_total`` with this label name and help, present
from start-up (at zero when unlabelled).  Counting an undeclared name is a bug
and fails at once (in the tests and the simulator).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CounterSpec:
    help: str
    label: str | None = None  # the Prometheus label name, or None for a plain counter


COUNTERS: dict[str, CounterSpec] = {
    "links_established": CounterSpec("HA links authenticated and adopted"),
    "link_errors": CounterSpec(
        "HA link connections closed on a protocol or handshake error, by error code", "code"
    ),
    "link_refused": CounterSpec(
        "HA link connections refused or evicted before joining, by reason", "reason"
    ),
    "connect_failures": CounterSpec("dials to a configured peer address that failed"),
    "goodbyes": CounterSpec("GOODBYE messages received from peers, by their code", "code"),
    "frames_received": CounterSpec("authenticated link frames received, by message type", "type"),
    "heartbeats_sent": CounterSpec("heartbeats sent (all links)"),
    "refused": CounterSpec(
        "peer messages refused in this node's current state (not applied), by reason", "reason"
    ),
    "peers_lost": CounterSpec("peers declared lost after the heartbeat threshold"),
    "loop_stalls": CounterSpec("stalls of this node's own event loop long enough to matter"),
    "loss_suppressed_own_stall": CounterSpec(
        "peer losses not declared because this node's own stall explains the silence"
    ),
    "promotions": CounterSpec("promotions of this node to primary"),
    "step_downs": CounterSpec("step-downs of this node from primary"),
    "handovers_aborted": CounterSpec("handovers aborted (the target did not take over in time)"),
    "fenced": CounterSpec("times this primary fenced itself (refused writes) after a stall"),
    "suspended": CounterSpec("times automatic promotion was suspended by flap damping"),
    "split_brains": CounterSpec("split brains detected (two primaries in different epochs)"),
    "merged_records": CounterSpec("records merged from a split-brain loser or a catching-up node"),
    "merge_conflicts": CounterSpec(
        "merged records both sides had changed (survivor's content won)"
    ),
    "snapshots_started": CounterSpec("snapshots started for a secondary"),
    "resyncs": CounterSpec(
        "SYNC_REQUESTs answered, by outcome (partial, resumed_snapshot, full)", "outcome"
    ),
    "resync_refused": CounterSpec(
        "requested resumes answered with a full snapshot instead, by reason", "reason"
    ),
    "records_applied": CounterSpec("replicated records applied from the primary"),
    "counter_updates": CounterSpec(
        "data-plane counter updates (POST /v1/counters), by result: applied, ignored "
        "(older than what is stored), unknown (no such SA), error",
        "result",
    ),
    "leases": CounterSpec(
        "sequence-number lease requests (POST /v1/leases), by result: written, error", "result"
    ),
    "rekey_released": CounterSpec("SAs released to the IKE daemon by the rekey governor"),
    "records_invalid": CounterSpec(
        "received records refused as invalid (never stored), by where they came from", "source"
    ),
}
