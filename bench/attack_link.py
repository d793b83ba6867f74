"""The link attack classes of bench/attacks.py: an attacker on the HA link path or its ports.

Wrong-key handshakes and a handshake flood on each node's link port, frames
corrupted or garbage injected by the on-path proxy (attack_kit.FlipProxy),
and impostor starts on an unsafe socket directory.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from attack_kit import FlipProxy, Outcome, link_attempt, wrong_key_init

from hasyncd.lab import LabCluster, LabNode, free_port

WRONG_KEY_INITS = 200  # INITs under a random key, per node
HANDSHAKE_FLOOD = 500  # connections sending nothing, garbage or a partial INIT, per node
LINK_FLIPS = 5  # transport frames with a flipped byte
LINK_GARBAGE = 3  # garbage injected into the stream


def metric_sum(node: LabNode, name: str, **labels: str) -> float:
    code, text = node.client.get("/metrics")
    if code != 200:
        return float("nan")
    total = 0.0
    for line in str(text).splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def link_handshakes(node: LabNode) -> list[Outcome]:
    wrong = Outcome("wrong-key handshakes on the link port", node.name)
    flood = Outcome(f"handshake flood ({HANDSHAKE_FLOOD} connections)", node.name)

    async def main() -> tuple[list[str], list[str]]:
        sem = asyncio.Semaphore(100)

        async def one(payload: bytes) -> str:
            async with sem:
                return await link_attempt(node.link, payload, 5.0)

        inits = [one(wrong_key_init(0)) for _ in range(WRONG_KEY_INITS)]
        junk = [
            b"",
            os.urandom(40),
            b"\x00\x00\x00\xc8HSYN\x01\x01",  # the start of an INIT that never ends
            b"\x00\x10\x00\x00" + os.urandom(100),  # a length over the handshake limit
        ]
        floods = [one(junk[i % len(junk)]) for i in range(HANDSHAKE_FLOOD)]
        return await asyncio.gather(*inits), await asyncio.gather(*floods)

    a, b = asyncio.run(main())
    for label in a:
        wrong.add(label, label.startswith("answered"))
    for label in b:
        flood.add(label, label.startswith("answered") or label == "still_open")
    return [wrong, flood]


def link_corruption(
    lab: LabCluster, proxies: list[FlipProxy], primary: LabNode, secondary: LabNode
) -> Outcome:
    out = Outcome("corrupted / garbage link frames (on-path proxy)", "link")
    before = {
        n.name: metric_sum(n, "hasyncd_links_established_total") for n in (primary, secondary)
    }
    errors0 = {n.name: link_errors(n) for n in (primary, secondary)}
    for step in range(LINK_FLIPS + LINK_GARBAGE):
        established = sum(
            metric_sum(n, "hasyncd_links_established_total") for n in lab.nodes.values()
        )
        for p in proxies:
            (p.corrupt if step < LINK_FLIPS else p.garbage)(1)
        lab.wait(
            lambda e=established: (
                sum(metric_sum(n, "hasyncd_links_established_total") for n in lab.nodes.values())
                > e
            ),
            30,
            "the link to re-form after a corrupted frame",
        )
        for p in proxies:
            p.clear()
        lab.wait(lambda: (secondary.status() or {}).get("in_sync") is True, 60, "resync")
    errors1 = {n.name: link_errors(n) for n in (primary, secondary)}
    tampered = sum(p.done_flips + p.done_garbage for p in proxies)
    for name, codes in errors1.items():
        for code, n in codes.items():
            delta = int(n - errors0[name].get(code, 0))
            if delta:
                out.rejected[f"{name}: {code}"] += delta
    detected = sum(errors1[n].get(c, 0) - errors0[n].get(c, 0) for n in errors1 for c in errors1[n])
    out.attempts = tampered
    out.accepted = max(0, tampered - int(detected))  # a tampered frame no node refused
    after = {n.name: metric_sum(n, "hasyncd_links_established_total") for n in (primary, secondary)}
    out.note = "links re-formed: " + ", ".join(f"{k} +{int(after[k] - before[k])}" for k in after)
    return out


def link_errors(node: LabNode) -> dict[str, float]:
    _, text = node.client.get("/metrics")
    out: dict[str, float] = {}
    for line in str(text).splitlines():
        if line.startswith("hasyncd_link_errors_total{"):
            head, _, value = line.rpartition(" ")
            out[head.split('code="')[1].split('"')[0]] = float(value)
    return out


# --- the socket directory ----------------------------------------------------------------


def impostor(lab: LabCluster) -> Outcome:
    out = Outcome("socket-directory impostor starts", "fw-x")
    shared = lab.dir / "shared"
    shared.mkdir(exist_ok=True)
    shared.chmod(0o777)
    victim = lab.dir / "victim.sock"
    victim.write_text("an operator's file")
    for sock, expect in (
        (shared / "api.sock", "writable by group or others"),
        (victim, "not a socket"),
    ):
        cfg = lab.dir / "fw-x.toml"
        cfg.write_text(
            f'[node]\nname = "fw-x"\n[link]\nlisten = "127.0.0.1:{free_port()}"\n'
            f'peers = ["127.0.0.1:{free_port()}"]\npsk_file = "{lab.psk}"\n'
            f'[api]\nsocket = "{sock}"\n'
        )
        for _ in range(3):
            res = subprocess.run(
                [sys.executable, "-m", "hasyncd", "run", "--config", str(cfg)],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            refused = res.returncode != 0 and expect in res.stderr
            out.add("refused to start: " + expect, not refused)
    intact = victim.read_text() == "an operator's file"
    out.note = f"operator's file intact: {intact}"
    return out
