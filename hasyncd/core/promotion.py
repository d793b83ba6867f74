"""Promotion step 2: make replicated IPsec state safe to use on the new primary, in O(1).

At promotion the new primary writes ONE ``promotion`` record (its epoch,
wall clock and the jump rule in force) and emits ``promotion_done`` at once:
from then on every node reads each outbound SA with its sequence number
advanced past anything the old primary could have used, each inbound SA per
the inbound policy, and each older IKE SA as needing RFC 6311 message-ID
sync (``hasyncd.core.seqview``).  Nothing is written per SA, so the time to
``on_primary`` does not depend on the number of records.

Afterwards, in slices that never stall heartbeats, a read-only scan counts
what the view changed and hands SAs that must be rekeyed (non-ESN counters
that would wrap) and IKE SAs that need message-ID sync to the rekey governor
(``hasyncd.core.governor``), which releases them to the IKE daemon at a pace.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hasyncd.core.events import PromotionDone
from hasyncd.core.seqview import IKE, SA, History, read_counters, sa_view
from hasyncd.counterkinds import INBOUND_POLICIES, promotion_id
from hasyncd.records import KINDS, KINDS_BY_CODE, Record
from hasyncd.store import SEQ_BITS, Store

log = logging.getLogger("hasyncd.roles")

SLICE = 512  # records per scan slice: a few milliseconds of decoding and viewing

__all__ = ["PromotionRule", "PromotionWork", "promotion_record"]


@dataclass(frozen=True, slots=True)
class PromotionRule:
    margin: int
    safety: float
    detection_s: float
    inbound: str  # one of INBOUND_POLICIES

    def as_json(self) -> dict[str, object]:
        return {
            "esp_seq_margin": self.margin,
            "seq_safety_factor": self.safety,
            "detection_s": self.detection_s,
            "inbound_window": self.inbound,
        }


def promotion_record(epoch: int, wall: float, rule: PromotionRule) -> Record:
    body = {
        "epoch": epoch,
        "at": wall,
        "margin": rule.margin,
        "safety": rule.safety,
        "detection_s": rule.detection_s,
        "inbound": rule.inbound,
    }
    assert rule.inbound in INBOUND_POLICIES
    return KINDS["promotion"].from_json(body, promotion_id(epoch))


@dataclass
class PromotionWork:
    """The scan after a promotion: what the view changed, and what must be rekeyed."""

    epoch: int
    reason: str
    started: float
    rule: PromotionRule
    esp_advanced: int = 0
    esp_leased: int = 0
    esp_rekey_required: int = 0
    inbound_advanced: int = 0
    ike_flagged: int = 0
    rekey: list[tuple[str, str]] = field(default_factory=list)  # (kind, id) for the governor
    _kinds: list[int] = field(default_factory=lambda: [SA, IKE])
    _cursor: str | None = None

    @property
    def done(self) -> bool:
        return not self._kinds

    @property
    def step_name(self) -> str:
        if not self._kinds:
            return "done"
        return "ipsec_scan" if self._kinds[0] == SA else "ike_scan"

    def event(self, store: Store, now: float) -> PromotionDone:
        counts = store.counts()
        return PromotionDone(
            self.epoch,
            self.reason,
            self.rule.as_json(),
            counts[SA],
            counts[IKE],
            now - self.started,
        )

    def run_slice(self, store: Store, history: History) -> None:
        if not self._kinds:
            return
        kind_code = self._kinds[0]
        kind = KINDS_BY_CODE[kind_code]
        ids = store.ids_after(kind_code, self._cursor, SLICE)
        for rid in ids:
            entry = store.get_raw(kind_code, rid)
            if entry is None or entry.blob is None or entry.version >> SEQ_BITS >= self.epoch:
                continue
            wire = kind.decode(entry.blob)
            if kind_code == SA:
                self._scan_sa(store, history, rid, entry.version, wire)
            elif not wire.mid_sync_required:
                self.ike_flagged += 1
                self.rekey.append(("ike_sa", rid))
        if len(ids) < SLICE:
            self._kinds.pop(0)
            self._cursor = None
        else:
            self._cursor = ids[-1]

    def _scan_sa(self, store: Store, history: History, rid: str, version: int, wire: Any) -> None:
        ctr, ctr_version = read_counters(store, rid)
        v = sa_view(wire, version, ctr, ctr_version, history)
        if not v.advanced:
            return
        if wire.direction == 1:
            self.esp_advanced += 1
            self.esp_leased += v.leased
        else:
            self.inbound_advanced += 1
        if v.wire.rekey_required and not wire.rekey_required:
            self.esp_rekey_required += 1
            self.rekey.append(("ipsec_sa", rid))

    def finish(self) -> None:
        log.warning(
            "promotion to epoch %d: %d outbound SAs read advanced (%d from a lease, %d need "
            "rekey), %d inbound windows advanced, %d IKE SAs need message-ID sync",
            self.epoch,
            self.esp_advanced,
            self.esp_leased,
            self.esp_rekey_required,
            self.inbound_advanced,
            self.ike_flagged,
        )

    def summary(self, now: float) -> dict[str, object]:
        return {
            **self.progress(),
            "reason": self.reason,
            "scan_ms": round((now - self.started) * 1000, 3),
        }

    def progress(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "step": self.step_name,
            "rule": self.rule.as_json(),
            "esp_advanced": self.esp_advanced,
            "esp_leased": self.esp_leased,
            "esp_rekey_required": self.esp_rekey_required,
            "inbound_advanced": self.inbound_advanced,
            "ike_flagged": self.ike_flagged,
        }
