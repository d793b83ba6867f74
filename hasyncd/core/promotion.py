"""Promotion step 2: make replicated IPsec state safe to use on the new primary.

* every outbound ``ipsec_sa`` gets its ``seq`` advanced by the configured
  margin, so the peer's replay window accepts the first packets the new
  primary sends (the old primary sent packets past the last replicated
  counter); an SA whose counter would wrap without ESN is marked
  ``rekey_required``;
* every ``ike_sa`` gets ``mid_sync_required`` so the IKE daemon runs the
  RFC 6311 message-ID synchronization before using it.

These are ordinary writes in the new epoch: versioned, replicated to the
secondaries and visible in the API.  The work is done in slices so a large
table never stalls heartbeats; records already written in the new epoch
(for example by the IKE daemon) are newer and are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from hasyncd.core.events import PromotionDone
from hasyncd.policy import KIND_CODES
from hasyncd.records import KINDS_BY_CODE, Record, advance_outbound_seq, require_mid_sync
from hasyncd.store import Store

log = logging.getLogger("hasyncd.roles")

SLICE = 2048  # records per slice: a few milliseconds of work

SA = KIND_CODES["ipsec_sa"]
IKE = KIND_CODES["ike_sa"]

Write = Callable[[int, str, Record], object]


@dataclass
class PromotionWork:
    epoch: int
    reason: str
    started: float
    margin: int
    esp_advanced: int = 0
    esp_rekey_required: int = 0
    ike_flagged: int = 0
    _kinds: list[int] = field(default_factory=lambda: [SA, IKE])
    _cursor: str | None = None

    @property
    def done(self) -> bool:
        return not self._kinds

    @property
    def step_name(self) -> str:
        if not self._kinds:
            return "done"
        return "ipsec_seq_advance" if self._kinds[0] == SA else "ike_mid_sync_flag"

    def run_slice(self, store: Store, write: Write) -> None:
        if not self._kinds:
            return
        kind_code = self._kinds[0]
        kind = KINDS_BY_CODE[kind_code]
        ids = store.ids_after(kind_code, self._cursor, SLICE)
        for rid in ids:
            entry = store.get_raw(kind_code, rid)
            if entry is None or entry.blob is None or entry.version >> 64 >= self.epoch:
                continue
            wire = kind.decode(entry.blob)
            if kind_code == SA:
                new = advance_outbound_seq(wire, self.margin)
                if new is None:
                    continue
                self.esp_advanced += 1
                if new.rekey_required and not wire.rekey_required:
                    self.esp_rekey_required += 1
            else:
                new = require_mid_sync(wire)
                if new is None:
                    continue
                self.ike_flagged += 1
            write(kind_code, rid, kind.from_wire(new, rid))
        if len(ids) < SLICE:
            self._kinds.pop(0)
            self._cursor = None
        else:
            self._cursor = ids[-1]

    def finish(self, now: float) -> PromotionDone:
        log.warning(
            "promotion to epoch %d complete: %d outbound SAs advanced by %d (%d need rekey), "
            "%d IKE SAs flagged for message-ID sync",
            self.epoch,
            self.esp_advanced,
            self.margin,
            self.esp_rekey_required,
            self.ike_flagged,
        )
        return PromotionDone(
            self.epoch,
            self.reason,
            self.esp_advanced,
            self.esp_rekey_required,
            self.ike_flagged,
            now - self.started,
        )

    def summary(self, now: float) -> dict[str, object]:
        return {
            **self.progress(),
            "reason": self.reason,
            "duration_ms": round((now - self.started) * 1000, 3),
        }

    def progress(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "step": self.step_name,
            "esp_advanced": self.esp_advanced,
            "esp_rekey_required": self.esp_rekey_required,
            "ike_flagged": self.ike_flagged,
        }
