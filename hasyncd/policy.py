"""The replication policy table: which kinds of state hasyncd replicates, and why not the rest.

This module is the single source of truth for the policy.  The API exposes it
verbatim at ``GET /v1/policy``; the API refuses writes of non-replicated kinds
with 422 and the wire codec refuses their codes, so the policy cannot drift
between what is documented, what is accepted and what is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from hasyncd.errors import NotReplicated, UnknownKind


@dataclass(frozen=True, slots=True)
class KindPolicy:
    kind: str
    replicated: bool
    reason: str
    code: int | None = None  # wire code, replicated kinds only
    # Written by hasyncd itself (promotion history, data-plane counters), never
    # through PUT/DELETE/batch: the records API reads them only.
    internal: bool = False

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "replicated": self.replicated, "reason": self.reason}


_RESTART = "sessions must restart after a failover"

POLICY: tuple[KindPolicy, ...] = (
    KindPolicy(
        "ipsec_sa",
        True,
        "IPsec child SAs (keys, replay counters, lifetimes, selectors) are replicated "
        "so tunnels resume after a failover without new negotiation",
        code=1,
    ),
    KindPolicy(
        "ike_sa",
        True,
        "IKE SAs are replicated with their message IDs so the new primary can run "
        "RFC 6311 synchronization instead of renegotiating",
        code=2,
    ),
    KindPolicy(
        "sslvpn_web_session",
        True,
        "SSL VPN web-mode authentication cookies are replicated so web-mode users are "
        "not asked to log in again after a failover",
        code=3,
    ),
    KindPolicy(
        "promotion",
        True,
        "the promotion history (epoch, time, sequence jump rule): every node reads outbound "
        "ESP sequence numbers through it, so a promotion writes one record, not one per SA",
        code=4,
        internal=True,
    ),
    KindPolicy(
        "sa_counters",
        True,
        "data-plane counters, send-rate estimates and lease ceilings per IPsec SA "
        "(POST /v1/counters, POST /v1/leases): they bound the sequence jump at promotion",
        code=5,
        internal=True,
    ),
    KindPolicy(
        "sslvpn_tunnel_session",
        False,
        f"SSL VPN tunnel-mode sessions carry per-connection TLS state; {_RESTART} "
        "and clients log in again",
    ),
    KindPolicy("proxy_session", False, f"explicit web and FTP proxy sessions: {_RESTART}"),
    KindPolicy("wccp_session", False, f"WCCP sessions: {_RESTART}"),
    KindPolicy("wanopt_session", False, f"WAN optimization sessions: {_RESTART}"),
    KindPolicy("web_cache", False, "web cache content is rebuilt on the new primary, not copied"),
    KindPolicy("byte_cache", False, "byte cache content is rebuilt on the new primary, not copied"),
    KindPolicy("pptp_session", False, f"PPTP sessions: {_RESTART}"),
    KindPolicy("l2tp_session", False, f"L2TP sessions: {_RESTART}"),
    KindPolicy("mgmt_session", False, f"management (admin GUI/SSH) sessions: {_RESTART}"),
)

BY_NAME: dict[str, KindPolicy] = {p.kind: p for p in POLICY}
REPLICATED_KINDS: tuple[str, ...] = tuple(p.kind for p in POLICY if p.replicated)
KIND_CODES: dict[str, int] = {p.kind: p.code for p in POLICY if p.code is not None}
KIND_BY_CODE: dict[int, str] = {code: kind for kind, code in KIND_CODES.items()}


def require_replicated(kind: str) -> KindPolicy:
    """The policy of a replicated kind; raises UnknownKind or NotReplicated otherwise."""
    policy = BY_NAME.get(kind)
    if policy is None:
        raise UnknownKind(f"unknown record kind {kind[:64]!r}", field="kind")
    if not policy.replicated:
        raise NotReplicated(kind, policy.reason)
    return policy


def policy_table() -> list[dict[str, object]]:
    return [p.as_json() for p in POLICY]


# Kinds whose id is a secret's digest (the web session's cookie): logs name at
# most this many hex characters of it, enough to tell sessions apart.
SECRET_ID_KINDS = frozenset({"sslvpn_web_session"})
SHOWN_ID_CHARS = 8


def shown_id(kind: int | str, rid: str) -> str:
    """A record id as logs and error messages may show it (kind by name or wire code)."""
    name = KIND_BY_CODE.get(kind, "") if isinstance(kind, int) else kind
    if name in SECRET_ID_KINDS:
        return rid[:SHOWN_ID_CHARS] + "..."
    return rid
