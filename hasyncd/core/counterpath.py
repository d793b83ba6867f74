"""The data plane's counter updates and sequence-number leases, applied on the primary.

Counter updates (``POST /v1/counters``) are the cheap path: many SAs per
call, only the id and integer ranges checked (the SA record itself is not
re-validated or re-encoded), a counter that would go backwards ignored, and
each update one small ``sa_counters`` write that replication coalesces per SA
(a later update of the same SA replaces an unsent one).  Each update also
refines the SA's send-rate estimate, which bounds the jump at the next
promotion (``hasyncd.core.seqview``).

Leases (``POST /v1/leases``) raise an outbound SA's ``seq_limit``; the shell
grants them only once the in-sync secondaries acknowledged the write, so any
node that can be promoted knows the ceiling.  With no in-sync secondary none
is granted: a node cut off from its peer (a partition, not a death) must not
hand out numbers the other side's new primary cannot know about.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from hasyncd.core.seqview import CTR, SA, read_counters, sa_view
from hasyncd.counterkinds import MAX_RATE
from hasyncd.kinds import MAX_REPLAY_WINDOW, U32, U64
from hasyncd.records import KINDS_BY_CODE
from hasyncd.store import SEQ_BITS

if TYPE_CHECKING:
    from hasyncd.core.node import NodeCore

# Updates or leases per request: ~10 µs each keeps one request near 100 ms of
# core work at most, and a 10,000-SA gateway reports in one request.
MAX_COUNTER_UPDATES = 10_000
MAX_LEASES = 10_000
# The rate estimate: an EWMA of Δseq/Δt with this time constant, raised at
# once to any higher sample taken over at least MIN_RATE_DT (fast up, slow
# down: the bound errs on the side of a larger jump).
RATE_TAU_S = 10.0
MIN_RATE_DT = 0.05

_ID_RE = re.compile(r"(esp|ah)-[0-9a-f]{8}@[0-9a-f.:]{2,45}\Z")
_DIR_OUT = 1
_replace = msgspec.structs.replace
_SA_DECODE = msgspec.msgpack.Decoder(KINDS_BY_CODE[SA].schema.wire).decode
_CTR_KIND = KINDS_BY_CODE[CTR]
_CTR_WIRE = _CTR_KIND.schema.wire


class CounterUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    seq: int
    bytes: int = 0
    packets: int = 0
    replay_bitmap: str | None = None


class LeaseRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    seq_limit: int


@dataclass
class Outcome:
    applied: int = 0
    ignored: int = 0
    unknown: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    granted: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0  # the newest version written (leases wait for it)

    def error(self, rid: str, code: str, message: str) -> None:
        self.errors.append({"id": rid[:96], "error": code, "message": message})


def _lookup(core: NodeCore, rid: str, out: Outcome, wall: float) -> tuple[Any, Any] | None:
    """The live SA ``rid``: (entry, wire), or None with the error or unknown noted."""
    if type(rid) is not str or _ID_RE.match(rid) is None:
        out.error(str(rid), "invalid_id", "not an ipsec_sa id (esp-<spi hex8>@<dst>)")
        return None
    entry = core.store.get(SA, rid, wall)
    if entry is None or entry.blob is None:
        out.unknown.append(rid)
        return None
    return entry, _SA_DECODE(entry.blob)


def _check_range(sa: Any, name: str, value: int, out: Outcome, rid: str) -> bool:
    limit = U64 if (name != "seq" or sa.esn) else U32
    if type(value) is not int or not 0 <= value <= limit:
        what = "2^64-1" if limit == U64 else "2^32-1 (no ESN)"
        out.error(rid, "out_of_range", f"{name} must be an integer in 0..{what}")
        return False
    return True


def update_counters(
    core: NodeCore, updates: list[CounterUpdate], now: float, *, wall: float
) -> Outcome:
    """Apply counter updates on the primary (the caller bounds their number)."""
    core.now, core.wall = now, wall  # both clocks are inputs
    core.check_writable(now)
    out = Outcome()
    history = core.promotions
    epoch = core.roles.epoch
    for u in updates:
        found = _lookup(core, u.id, out, wall)
        if found is None:
            continue
        entry, sa = found
        if not all(
            _check_range(sa, n, getattr(u, n), out, u.id) for n in ("seq", "bytes", "packets")
        ):
            continue
        bitmap = None
        if u.replay_bitmap is not None:
            if sa.direction == _DIR_OUT:
                out.error(u.id, "invalid_counter", "replay_bitmap applies to inbound SAs only")
                continue
            try:
                bitmap = bytes.fromhex(u.replay_bitmap)
            except ValueError:
                out.error(u.id, "invalid_counter", "replay_bitmap must be hex")
                continue
            if len(bitmap) > MAX_REPLAY_WINDOW // 8:
                out.error(u.id, "invalid_counter", f"replay_bitmap over {MAX_REPLAY_WINDOW} bits")
                continue
        ctr, ctr_version = read_counters(core.store, u.id)
        current = sa_view(sa, entry.version, ctr, ctr_version, history).wire
        more = ctr is None or u.bytes > ctr.bytes or u.packets > ctr.packets
        newer_bitmap = bitmap is not None and bitmap != (ctr.replay_bitmap if ctr else None)
        if u.seq < current.seq or (u.seq == current.seq and not (more or newer_bitmap)):
            out.ignored += 1
            continue
        rate = 0.0 if ctr is None else ctr.rate
        if ctr is not None and ctr.at is not None and ctr_version >> SEQ_BITS == epoch:
            dt = wall - ctr.at
            if dt > 0:
                sample = min(MAX_RATE, max(0, u.seq - ctr.seq) / dt)
                alpha = 1.0 - math.exp(-dt / RATE_TAU_S)
                rate = rate + alpha * (sample - rate)
                if dt >= MIN_RATE_DT and sample > rate:
                    rate = sample
        new = _CTR_WIRE(
            u.seq,
            max(u.bytes, ctr.bytes if ctr else 0),
            max(u.packets, ctr.packets if ctr else 0),
            bitmap if bitmap is not None else (ctr.replay_bitmap if ctr else None),
            min(MAX_RATE, rate),
            wall,
            ctr.seq_limit if ctr else 0,
            entry.expires,
        )
        result = core.local_write(CTR, u.id, _CTR_KIND.from_checked(new, u.id), quiet=True)
        out.version = result.version
        out.applied += 1
    for label, n in (
        ("applied", out.applied),
        ("ignored", out.ignored),
        ("unknown", len(out.unknown)),
        ("error", len(out.errors)),
    ):
        if n:
            core.count("counter_updates", label, n)
    return out


def write_leases(core: NodeCore, leases: list[LeaseRequest], now: float, *, wall: float) -> Outcome:
    """Raise the ceilings; ``granted`` holds them once written (the shell waits for acks)."""
    core.now, core.wall = now, wall  # both clocks are inputs
    core.check_writable(now)
    out = Outcome()
    for req in leases:
        found = _lookup(core, req.id, out, wall)
        if found is None:
            continue
        entry, sa = found
        if sa.direction != _DIR_OUT:
            out.error(req.id, "invalid_lease", "leases apply to outbound SAs only")
            continue
        if not _check_range(sa, "seq", req.seq_limit, out, req.id):
            continue
        ctr, ctr_version = read_counters(core.store, req.id)
        current = sa_view(sa, entry.version, ctr, ctr_version, core.promotions).wire
        if req.seq_limit <= current.seq:
            out.error(
                req.id,
                "invalid_lease",
                f"seq_limit must be above the SA's current seq ({current.seq})",
            )
            continue
        if (
            ctr is not None
            and req.seq_limit <= ctr.seq_limit
            and ctr_version >> SEQ_BITS == (core.roles.epoch)
        ):
            # Already granted in this epoch: grant again (idempotent), write nothing.
            out.granted.append({"id": req.id, "seq_limit": ctr.seq_limit})
            out.version = max(out.version, ctr_version)
            continue
        base: Any = ctr if ctr is not None else _CTR_WIRE(0, 0, 0, None, 0.0, None, 0, None)
        new = _replace(
            base,
            seq=max(base.seq, current.seq),  # the view as read now: see seqview.sa_view
            seq_limit=max(base.seq_limit, req.seq_limit),
            expires=entry.expires,
        )
        result = core.local_write(CTR, req.id, _CTR_KIND.from_wire(new, req.id), quiet=True)
        out.version = max(out.version, result.version)
        out.granted.append({"id": req.id, "seq_limit": new.seq_limit})
    if out.granted:
        core.count("leases", "written", len(out.granted))
    if out.errors or out.unknown:
        core.count("leases", "error", len(out.errors) + len(out.unknown))
    return out
