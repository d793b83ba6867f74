"""End to end, real browser: a web-mode login in headless Chromium survives a failover.

The test builds its own network (root only): namespaces for fw-a and fw-b,
their HA link on 192.0.2.0/24, and a LAN bridge on 198.51.100.0/24 in a third
namespace, which the root namespace joins through one veth so that the
browser (Debian's chromium and chromium-driver, driven by selenium; nothing
is downloaded) reaches the portal at the virtual IP 198.51.100.10.  The VIP is
moved by the example hook examples/hooks/vip (on_primary / on_secondary).

The browser fills in the login form on fw-a.  Then fw-a dies: SIGKILL of its
hasyncd and its portal, and its LAN interface goes down (a killed process
leaves its namespace's kernel answering ARP for the VIP; a dead gateway does
not).  The browser reloads the same URL and lands on the logged-in page,
served by fw-b.  Screenshots before and after go to $HASYNCD_ARTIFACTS
(default tests/artifacts/).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from hasyncd.lab import LabCluster, LabNode
from hasyncd.portal import lab as portal_lab
from tests.test_integration_netns import _can_netns, _ip

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
VIP = "198.51.100.10"
LAN = {"fw-a": "198.51.100.11", "fw-b": "198.51.100.12"}
HOST_ADDR = "198.51.100.100"  # the root namespace's (the browser's) address on the LAN
PORT = 8443
HOOK = Path(__file__).resolve().parent.parent / "examples" / "hooks" / "vip"
ARTIFACTS = Path(os.environ.get("HASYNCD_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))


class Net:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = {"fw-a": f"hsd{tag}va", "fw-b": f"hsd{tag}vb"}
        self.lan = f"hsd{tag}vl"
        self.host_if = f"hsd{tag}vh"

    def create(self) -> None:
        a, b = self.ns["fw-a"], self.ns["fw-b"]
        for ns in (a, b, self.lan):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # HA link: a direct veth pair between the two gateways.
        _ip("link", "add", "hlink", "netns", a, "type", "veth", "peer", "name", "hlink", "netns", b)
        _ip("-n", a, "addr", "add", "192.0.2.1/24", "dev", "hlink")
        _ip("-n", b, "addr", "add", "192.0.2.2/24", "dev", "hlink")
        # LAN: a bridge with one port per gateway and one for the browser's host.
        _ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.lan, "link", "set", "br0", "up")
        for name, port in (("fw-a", "pa"), ("fw-b", "pb")):
            ns = self.ns[name]
            _ip("-n", ns, "link", "set", "hlink", "up")
            _ip("link", "add", "lan0", "netns", ns, "type", "veth", "peer", "name", port)
            _ip("link", "set", port, "netns", self.lan)
            _ip("-n", ns, "addr", "add", f"{LAN[name]}/24", "dev", "lan0")
            _ip("-n", ns, "link", "set", "lan0", "up")
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "ph")
        _ip("link", "set", "ph", "netns", self.lan)
        for port in ("pa", "pb", "ph"):
            _ip("-n", self.lan, "link", "set", port, "master", "br0")
            _ip("-n", self.lan, "link", "set", port, "up")
        _ip("addr", "add", f"{HOST_ADDR}/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        for ns in (*self.ns.values(), self.lan):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def has_vip(self, node: str) -> bool:
        out = subprocess.run(
            ["ip", "-n", self.ns[node], "-4", "-o", "addr", "show", "dev", "lan0"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return f" {VIP}/" in out


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"needs {path} (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def net() -> Iterator[Net]:
    why = _can_netns() or _browser_missing()
    if why is not None:
        pytest.skip(why)
    n = Net()
    n.destroy()
    n.create()
    try:
        yield n
    finally:
        n.destroy()


@pytest.fixture
def vip_cluster(net: Net, tmp_path: Path) -> Iterator[tuple[LabCluster, portal_lab.PortalSetup]]:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hook = hooks / "vip"
    shutil.copy(HOOK, hook)
    (hooks / "vip.conf").write_text(f"VIP={VIP}/24\nVIP_DEV=lan0\n")
    nodes = [
        LabNode(name, tmp_path, f"192.0.2.{i}:7411", prio, prefix=("ip", "netns", "exec", ns))
        for i, (name, prio, ns) in enumerate(
            (("fw-a", 200, net.ns["fw-a"]), ("fw-b", 100, net.ns["fw-b"])), 1
        )
    ]
    base: dict[str, dict[str, Any]] = {
        "link": {"hello_holddown_ms": 1000},
        "sync": {"mode": "sync", "sync_timeout_ms": 1000},
        "hooks": {"on_primary": str(hook), "on_secondary": str(hook)},
    }
    lab = LabCluster(tmp_path, nodes, base)
    setup = portal_lab.configure(
        lab,
        dict.fromkeys(lab.nodes, f"0.0.0.0:{PORT}"),
        {"alice": "alice browser pass"},
        tls_names=[VIP],
    )
    lab.start()
    try:
        primary, _ = lab.wait_pair()
        assert primary.name == "fw-a"
        lab.wait(lambda: net.has_vip("fw-a"), 10, "the VIP on fw-a (on_primary hook)")
        for node in nodes:
            node.start_portal()
        # Each portal answers inside its own namespace; the host reaches them via the LAN.
        for node in nodes:
            portal_lab.wait_portal(lab, node, f"https://{LAN[node.name]}:{PORT}", _no_verify())
        yield lab, setup
    finally:
        for node in nodes:
            node.kill()


def _no_verify() -> ssl.SSLContext:
    """The lab certificate names the VIP; the per-node addresses are checked without it."""
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def _chrome(profile: Path, tmp_path: Path) -> Any:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--ignore-certificate-errors",  # the lab's self-signed certificate for the VIP
        "--window-size=1000,700",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=opts)


def test_browser_stays_logged_in_across_failover(
    vip_cluster: tuple[LabCluster, portal_lab.PortalSetup],
    net: Net,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab, _ = vip_cluster
    a, b = lab["fw-a"], lab["fw-b"]
    # Selenium Manager (which can download browsers and drivers) must never run:
    # both paths are given, and a trap stands in for it in case selenium calls it anyway.
    trap = tmp_path / "selenium-manager-called"
    fake_manager = tmp_path / "selenium-manager"
    fake_manager.write_text(f"#!/bin/sh\ntouch {trap}\nexit 1\n")
    fake_manager.chmod(0o755)
    monkeypatch.setenv("SE_MANAGER_PATH", str(fake_manager))
    monkeypatch.setenv("SE_OFFLINE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    before = ARTIFACTS / "browser-before-failover.png"
    after = ARTIFACTS / "browser-after-failover.png"
    for shot in (before, after):
        shot.unlink(missing_ok=True)

    url = f"https://{VIP}:{PORT}/"
    driver = _chrome(tmp_path / "profile", tmp_path)
    try:
        driver.set_page_load_timeout(60)
        driver.get(url)
        assert driver.current_url == f"{url}login"  # not logged in yet: sent to the form
        assert driver.find_element(By.ID, "node").text == "fw-a"
        driver.find_element(By.ID, "username").send_keys("alice")
        driver.find_element(By.ID, "password").send_keys("alice browser pass")
        driver.find_element(By.ID, "submit").click()
        _wait(lambda: driver.current_url == url, "the logged-in page")
        assert driver.find_element(By.ID, "user").text == "alice"
        assert driver.find_element(By.ID, "node").text == "fw-a"
        cookies = driver.get_cookies()
        assert [(c["httpOnly"], c["secure"], c["sameSite"]) for c in cookies] == [
            (True, True, "Lax")
        ]
        driver.save_screenshot(str(before))
        print(f"screenshot before the failover: {before}")

        a.kill()  # SIGKILL: fw-a's hasyncd and portal
        _ip("-n", net.ns["fw-a"], "link", "set", "lan0", "down")  # ...and the dead host's NIC
        t_kill = time.monotonic()
        lab.wait(lambda: b.role() == "primary", 10, "fw-b to promote")
        lab.wait(lambda: net.has_vip("fw-b"), 10, "the VIP on fw-b (on_primary hook)")

        driver.refresh()  # the same URL, the same cookie, now answered by fw-b
        assert driver.current_url == url
        assert driver.find_elements(By.ID, "login") == []  # no login form
        assert driver.find_element(By.ID, "welcome").text == "Logged in as alice"
        assert driver.find_element(By.ID, "node").text == "fw-b"
        assert driver.find_element(By.ID, "host").text == f"{VIP}:{PORT}"
        driver.save_screenshot(str(after))
        print(
            f"screenshot after the failover ({time.monotonic() - t_kill:.2f} s after the kill): "
            f"{after}"
        )
    finally:
        driver.quit()
    assert not trap.exists(), "selenium tried to run Selenium Manager"
    assert before.stat().st_size > 0 and after.stat().st_size > 0

    def vip_hook_done() -> bool:
        recent = (b.status() or {})["hooks"]["recent"]
        return any(h["hook"] == "on_primary" and h["result"] == "ok" for h in recent)

    lab.wait(vip_hook_done, 10, "fw-b's on_primary hook to be recorded as ok")
    run = [h for h in (b.status() or {})["hooks"]["recent"] if h["hook"] == "on_primary"][-1]
    assert f"vip hook: {VIP}/24 on lan0 (fw-b primary" in run["stderr"]


def _wait(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
