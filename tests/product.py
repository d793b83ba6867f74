"""The replication policy as the product brief states it, written out independently of the code.

Tests compare ``hasyncd.policy`` and the running daemon against these lists,
so a change to the policy table has to be a deliberate change here too.
"""

REPLICATED = ("ipsec_sa", "ike_sa", "sslvpn_web_session")
# Replicated kinds hasyncd writes itself (read-time ESP sequence numbers, issue 10):
# the records API reads them, PUT/DELETE/batch refuse them (read_only_kind).
INTERNAL = ("promotion", "sa_counters")
NOT_REPLICATED = (
    "sslvpn_tunnel_session",
    "proxy_session",
    "wccp_session",
    "wanopt_session",
    "web_cache",
    "byte_cache",
    "pptp_session",
    "l2tp_session",
    "mgmt_session",
)
