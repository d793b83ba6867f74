"""``hasyncd esp-endpoint``: a reference userspace ESP-in-UDP endpoint fed by the local hasyncd.

Owns the data-plane side of issue 10: it reads the SAs from its node's hasyncd
(``GET /v1/records/ipsec_sa``), runs them on one UDP socket (RFC 3948
ESP-in-UDP) with ``hasyncd.contrib.esp``, reports counters (``POST
/v1/counters``) and, in lease mode, sends only below a granted ceiling
(``POST /v1/leases``).  It is active only while its node is primary: it polls
``GET /v1/status`` and on every promotion reloads the SAs, so it continues
from the records' (advanced) ``seq`` and replicated replay windows.  A
secondary's endpoint neither sends nor accepts.  Traffic source: it reflects
each decrypted inner packet back through the tunnel's outbound SA (the
reference and test mode; a real gateway would route it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from hasyncd.contrib import esp
from hasyncd.errors import ConfigError, EspError

log = logging.getLogger("hasyncd.esp")

MAX_COUNTER_UPDATES = 10_000  # the contract's cap per POST /v1/counters request
MAX_LEASES = 10_000  # the same cap for POST /v1/leases
PAGE = 1000  # the API's largest list page (hasyncd.daemon.api.MAX_PAGE)
# 4 MiB of socket buffer: bursts of a few thousand packets while the loop is
# busy reloading SAs; Linux caps it at net.core.rmem_max.
UDP_BUFFER = 4 * 1024 * 1024
# Alone (no in-sync secondary) hasyncd grants no lease (503 no_in_sync_secondary):
# the endpoint sends under counter reports and asks again this often.
LEASE_RETRY_S = 1.0
NAT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
NEXT_HEADER_IPV4, NEXT_HEADER_IPV6 = 4, 41


@dataclass(frozen=True)
class EndpointConfig:
    api: str  # the local hasyncd's API socket
    listen: tuple[str, int]
    mode: str = "counters"  # or "leases"
    report_ms: int = 100  # counter reports (and lease checks) at most this often
    poll_ms: int = 100  # how often the node's role is read
    lease_block: int = 65536  # sequence numbers per lease; renewed at half way
    # Lease mode with no in-sync secondary (no lease can be granted): "counters"
    # keeps sending under the rate bound, "stop" stops at the last ceiling (no
    # reuse even in a split brain, but a lone survivor's tunnels stall).
    lease_alone: str = "counters"
    state_file: Path | None = None  # JSON counters, rewritten each report (tests, lab)

    @classmethod
    def load(cls, path: Path) -> EndpointConfig:
        try:
            raw = tomllib.loads(path.read_text())["esp"]
            host, _, port = str(raw["listen"]).rpartition(":")
            cfg = cls(
                api=str(raw["api"]),
                listen=(host.strip("[]"), int(port)),
                mode=str(raw.get("mode", "counters")),
                report_ms=int(raw.get("report_ms", 100)),
                poll_ms=int(raw.get("poll_ms", 100)),
                lease_block=int(raw.get("lease_block", 65536)),
                lease_alone=str(raw.get("lease_alone", "counters")),
                state_file=Path(raw["state_file"]) if raw.get("state_file") else None,
            )
        except (OSError, KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: [esp] section: {exc!r}") from None
        if cfg.mode not in {"counters", "leases"}:
            raise ConfigError(f"{path}: [esp].mode must be counters or leases")
        if cfg.lease_alone not in {"counters", "stop"}:
            raise ConfigError(f"{path}: [esp].lease_alone must be counters or stop")
        if not (cfg.report_ms > 0 and cfg.poll_ms > 0 and cfg.lease_block >= 2):
            raise ConfigError(f"{path}: [esp] report_ms, poll_ms > 0 and lease_block >= 2")
        return cfg


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, endpoint: Endpoint) -> None:
        self.ep = endpoint

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.ep.received(data)


class Endpoint:
    def __init__(self, cfg: EndpointConfig) -> None:
        self.cfg = cfg
        self.stats: Counter[str] = Counter()
        self.active = False
        self.epoch: int | None = None
        self.inbound: dict[int, esp.InboundSa] = {}
        self.outbound: dict[str, esp.OutboundSa] = {}  # by id
        self.by_tunnel: dict[str, esp.OutboundSa] = {}
        self.tunnel_of: dict[int, str] = {}  # inbound SPI -> tunnel
        self.granted: dict[str, int] = {}  # outbound id -> highest granted seq_limit
        self.pinned: set[str] = set()  # outbound SAs marked rekey_required: never sent on
        self.leased = True  # lease mode: ceilings in force (False while hasyncd is alone)
        self._lease_retry = 0.0
        self._transport: asyncio.DatagramTransport | None = None
        self._http: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._last_warning = ""

    # -- the data path (synchronous, in the protocol callback) -----------------------

    def received(self, data: bytes) -> None:
        if data == NAT_KEEPALIVE:
            self.stats["rx_keepalive"] += 1
            return
        if not self.active:
            self.stats["rx_inactive"] += 1
            return
        spi = esp.spi_of(data) if len(data) >= esp.ESP_HEADER.size else -1
        sa = self.inbound.get(spi)
        if sa is None:
            self.stats["rx_unknown_spi" if spi > 0 else "rx_non_esp"] += 1
            return
        try:
            payload, nh = sa.open(data)
        except EspError as exc:
            self.stats[exc.code] += 1
            return
        self.stats["rx_ok"] += 1
        self.reflect(self.tunnel_of[spi], payload, nh)

    def reflect(self, tunnel: str, payload: bytes, nh: int) -> None:
        out = self.by_tunnel.get(tunnel)
        if out is None or self._transport is None:
            self.stats["tx_no_sa"] += 1
            return
        try:
            packet = out.seal(payload, nh)
        except EspError as exc:
            self.stats[exc.code] += 1
            return
        self._transport.sendto(packet, out.dest)
        self.stats["tx_ok"] += 1
        if self.cfg.mode == "leases" and self._needs_lease(out):
            self._wake.set()

    def _needs_lease(self, sa: esp.OutboundSa) -> bool:
        return (
            sa.limit - sa.seq <= self.cfg.lease_block // 2
            and sa.limit < _cap(sa)
            and sa.id not in self.pinned
        )

    # -- hasyncd --------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self._http is not None
        async with self._http.request(method, "http://hasyncd" + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def load(self, epoch: int) -> None:
        """Replace every SA from the records (a promotion): their seq, windows and counters."""
        records: list[tuple[str, dict[str, Any]]] = []
        after = ""
        while True:
            q = f"?limit={PAGE}" + (f"&after={after}" if after else "")
            code, body = await self._call("GET", "/v1/records/ipsec_sa" + q)
            if code != 200:
                raise EspError("load_failed", f"listing ipsec_sa: HTTP {code}")
            records += [(item["id"], item["record"]) for item in body["items"]]
            if not body.get("next"):
                break
            after = body["next"]
        inbound: dict[int, esp.InboundSa] = {}
        outbound: dict[str, esp.OutboundSa] = {}
        by_tunnel: dict[str, esp.OutboundSa] = {}
        tunnel_of: dict[int, str] = {}
        pinned: set[str] = set()
        for rid, rec in records:
            try:
                if rec["direction"] == "in":
                    inbound[rec["spi"]] = esp.inbound(rid, rec)
                    tunnel_of[rec["spi"]] = rec["tunnel"]
                else:
                    encap = rec.get("encap") or {"dport": 4500}
                    sa = esp.outbound(rid, rec, (rec["dst"], int(encap["dport"])))
                    if rec.get("rekey_required"):
                        sa.limit = sa.seq  # hasyncd says: rekey before sending on it
                        pinned.add(rid)
                    outbound[rid] = sa
                    by_tunnel[rec["tunnel"]] = sa
            except EspError as exc:
                self.stats[exc.code] += 1
                log.warning("SA %s not run: %s", rid, exc.message)
        if self.cfg.mode == "leases":
            for sa in outbound.values():
                sa.limit = min(sa.limit, sa.seq)  # nothing granted yet on this node
        self.inbound, self.outbound, self.by_tunnel, self.tunnel_of = (
            inbound,
            outbound,
            by_tunnel,
            tunnel_of,
        )
        self.granted, self.pinned, self.leased = {}, pinned, True
        self.stats["loads"] += 1
        log.info("epoch %d: loaded %d inbound, %d outbound SAs", epoch, len(inbound), len(outbound))

    async def report(self) -> None:
        """One counter report of every SA that changed since the last one."""
        updates: list[dict[str, Any]] = []
        for o in self.outbound.values():
            if o.counters.dirty:
                o.counters.dirty = False
                updates.append(_update(o.id, o.seq, o.counters))
        for i in self.inbound.values():
            if i.counters.dirty:
                i.counters.dirty = False
                u = _update(i.id, i.window.top, i.counters)
                u["replay_bitmap"] = i.window.bitmap_hex()
                updates.append(u)
        for start in range(0, len(updates), MAX_COUNTER_UPDATES):
            chunk = updates[start : start + MAX_COUNTER_UPDATES]
            code, body = await self._call("POST", "/v1/counters", {"updates": chunk})
            if code != 200:
                self.stats["reports_failed"] += 1
                self._mark_dirty(chunk)
                raise EspError("report_failed", f"POST /v1/counters: HTTP {code} {_err(body)}")
            self.stats["reports_ok"] += 1
            if body.get("errors"):
                self.stats["report_errors"] += len(body["errors"])

    def _mark_dirty(self, chunk: list[dict[str, Any]]) -> None:
        ids = {u["id"] for u in chunk}
        sas: list[esp.OutboundSa | esp.InboundSa] = [*self.outbound.values()]
        sas += self.inbound.values()
        for sa in sas:
            if sa.id in ids:
                sa.counters.dirty = True

    async def renew_leases(self, force: bool = False) -> None:
        """Ask for a new ceiling for every outbound SA at or past half of its lease.

        While hasyncd has no in-sync secondary it grants none: the endpoint then
        sends under counter reports (the rate bound) and asks again every
        ``LEASE_RETRY_S``; the first grant puts the ceilings back in force.
        """
        now = asyncio.get_running_loop().time()
        if not self.leased and not force and now < self._lease_retry:
            return
        want = [
            {"id": sa.id, "seq_limit": min(sa.seq + self.cfg.lease_block, _cap(sa))}
            for sa in self.outbound.values()
            if sa.id not in self.pinned and (force or not self.leased or self._needs_lease(sa))
        ]
        loads = self.stats["loads"]
        for start in range(0, len(want), MAX_LEASES):
            code, body = await self._call(
                "POST", "/v1/leases", {"leases": want[start : start + MAX_LEASES]}
            )
            if self.stats["loads"] != loads:  # the SAs were reloaded meanwhile: a stale answer
                return
            if code == 503 and _err(body) == "no_in_sync_secondary":
                self._unleased(now)
                return
            if code != 200:
                self.stats["leases_failed"] += 1
                raise EspError("lease_failed", f"POST /v1/leases: HTTP {code} {_err(body)}")
            granted = {g["id"]: int(g["seq_limit"]) for g in body.get("granted", [])}
            self.stats["lease_errors"] += len(body.get("errors", []))
            for sa in self.outbound.values():
                lim = granted.get(sa.id)
                if not self.leased and sa.id not in self.pinned:  # ceilings back in force
                    sa.limit = max(sa.seq, lim or 0)
                if lim is not None and lim > sa.limit:
                    sa.limit = lim
                if lim is not None:
                    self.granted[sa.id] = lim
                    self.stats["leases_granted"] += 1
            if not self.leased:
                log.info("leases granted again: sending below the ceilings")
                self.leased = True

    def _unleased(self, now: float) -> None:
        self.stats["leases_unavailable"] += 1
        self._lease_retry = now + LEASE_RETRY_S
        if self.cfg.lease_alone == "stop":
            if self.leased:
                log.warning("no in-sync secondary, no lease: stopping at the granted ceilings")
            return
        if self.leased:
            log.warning("no in-sync secondary, no lease: sending under counter reports")
        self.leased = False
        for sa in self.outbound.values():
            if sa.id not in self.pinned:
                sa.limit = _cap(sa)

    # -- the loops ------------------------------------------------------------------

    async def watch(self) -> None:
        """Follow the node's role; on becoming primary (a new epoch) reload, then go active."""
        while True:
            try:
                code, st = await self._call("GET", "/v1/status")
                primary = code == 200 and st.get("role") == "primary"
                epoch = int(st.get("epoch", 0)) if code == 200 else None
                if primary and (not self.active or epoch != self.epoch) and _ready(st):
                    self.active = False
                    assert epoch is not None
                    await self.load(epoch)
                    if self.cfg.mode == "leases":
                        await self.renew_leases(force=True)
                    self.epoch, self.active = epoch, True
                    log.info("active as primary of epoch %d", epoch)
                elif not primary and self.active:
                    await self._deactivate("the node is no longer primary")
            except (aiohttp.ClientError, OSError, EspError, ValueError) as exc:
                if self.active:
                    await self._deactivate(f"hasyncd: {exc}")
                self.stats["api_errors"] += 1
            await asyncio.sleep(self.cfg.poll_ms / 1000)

    async def _deactivate(self, why: str) -> None:
        self.active = False
        log.warning("inactive: %s", why)
        with contextlib.suppress(aiohttp.ClientError, OSError, EspError, ValueError):
            await self.report()  # a demoted node's report is refused (409); best effort

    async def reporter(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.report_ms / 1000)
            self._wake.clear()
            if self.active:
                try:
                    if self.cfg.mode == "leases":
                        await self.renew_leases()
                    await self.report()
                except (aiohttp.ClientError, OSError, EspError, ValueError) as exc:
                    self.stats["api_errors"] += 1
                    if str(exc) != self._last_warning:  # once per distinct error, not per tick
                        log.warning("%s", exc)
                    self._last_warning = str(exc)
            self.write_state()

    def write_state(self) -> None:
        if self.cfg.state_file is None:
            return
        state = {
            "pid": os.getpid(),
            "active": self.active,
            "epoch": self.epoch,
            "mode": self.cfg.mode,
            "leased": self.cfg.mode == "leases" and self.leased,
            "listen": list(self.cfg.listen),
            "stats": dict(self.stats),
            "sas": {"in": len(self.inbound), "out": len(self.outbound)},
        }
        tmp = self.cfg.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.cfg.state_file)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(
            socket.AF_INET6 if ":" in self.cfg.listen[0] else socket.AF_INET, socket.SOCK_DGRAM
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
        sock.bind(self.cfg.listen)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=sock)
        self._transport = transport
        timeout = aiohttp.ClientTimeout(total=10)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.cfg.api), timeout=timeout
        )
        log.info(
            "ESP-in-UDP on %s:%d, hasyncd at %s, %s mode",
            *self.cfg.listen,
            self.cfg.api,
            self.cfg.mode,
        )
        try:
            await asyncio.gather(self.watch(), self.reporter())
        finally:
            transport.close()
            await self._http.close()


def _cap(sa: esp.OutboundSa) -> int:
    return esp.U64 if sa.esn else esp.U32


def _ready(st: dict[str, Any]) -> bool:
    """The promotion steps that advance outbound seq have run (or the API shows it at read time)."""
    promo = st.get("promotion")
    return not isinstance(promo, dict) or promo.get("complete", True) is not False


def _update(rid: str, seq: int, c: esp.Counters) -> dict[str, Any]:
    return {"id": rid, "seq": seq, "bytes": c.bytes, "packets": c.packets}


def _err(body: Any) -> str:
    return str(body.get("error", "")) if isinstance(body, dict) else ""


def main(config: Path) -> int:
    cfg = EndpointConfig.load(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Endpoint(cfg).run())
    return 0
