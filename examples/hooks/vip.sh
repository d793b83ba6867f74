#!/bin/sh
# Example hasyncd hook: the virtual IP follows the primary role.
#
# Configure it as [hooks] on_primary and on_secondary. Its settings are in
# vip.conf next to this script (hooks get only HASYNCD_* and PATH):
#
#   VIP=198.51.100.10/24   # the address clients use (the portal's, the gateway's)
#   DEV=lan0               # the interface that carries it
#
# on_primary:   ip addr replace VIP dev DEV, then a gratuitous ARP so that
#               neighbours (and switches) send to this node at once;
# on_secondary: ip addr del VIP dev DEV.
# stdin is hasyncd's JSON document (node, old_role, new_role, epoch, reason...).
set -eu
conf="$(dirname "$0")/vip.conf"
[ -r "$conf" ] && . "$conf"
: "${VIP:?set VIP in $conf}" "${DEV:?set DEV in $conf}"
reason=$(sed -n 's/.*"reason": *"\([^"]*\)".*/\1/p')
ip4=${VIP%/*}

case "${HASYNCD_HOOK:-}" in
on_primary)
    ip addr replace "$VIP" dev "$DEV"
    if command -v arping >/dev/null 2>&1; then
        arping -q -U -c 2 -I "$DEV" "$ip4" || true
    else
        # Gratuitous ARP request (sender = target = the VIP) from DEV's MAC, stdlib only.
        python3 - "$DEV" "$ip4" <<'PY' || true
import socket, struct, sys
dev, ip = sys.argv[1], socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
mac = s.getsockname()[4]
arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + bytes(6) + ip
s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
PY
    fi
    echo "vip: $VIP on $DEV ($HASYNCD_NODE primary, epoch $HASYNCD_EPOCH: $reason)" >&2
    ;;
on_secondary)
    ip addr del "$VIP" dev "$DEV" 2>/dev/null || true
    echo "vip: $VIP removed from $DEV ($HASYNCD_NODE secondary: $reason)" >&2
    ;;
*)
    echo "vip: nothing to do for ${HASYNCD_HOOK:-?}" >&2
    ;;
esac
