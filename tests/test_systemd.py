"""The shipped systemd units and install script: verified, hardened, and what they rely on works.

``systemd-analyze`` checks the units offline (no running systemd needed);
the install script is run into a staging directory (DESTDIR).  What cannot
be exercised without systemd as PID 1 (seccomp filters, namespaces) is
checked statically by ``systemd-analyze security``; MemoryDenyWriteExecute
is exercised for real with the kernel's PR_SET_MDWE, which it is built on.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hasyncd import samples
from hasyncd.lab import LabCluster

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("hasyncd.service", "hasyncd@.service")
MAX_EXPOSURE = 2.5  # the bar for `systemd-analyze security`

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def run(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/install into a staging root: the files a host gets."""
    root = tmp_path_factory.mktemp("root")
    out = run(str(ROOT / "scripts" / "install"), env={**os.environ, "DESTDIR": str(root)})
    assert out.returncode == 0, out.stdout + out.stderr
    return root


@pytest.mark.slow
def test_install_stages_the_venv_units_user_and_config(staged: Path) -> None:
    link = staged / "usr/local/bin/hasyncd"
    assert os.readlink(link) == "/opt/hasyncd/bin/hasyncd"  # absolute on the target host
    binary = staged / "opt/hasyncd/bin/hasyncd"
    version = run(str(binary), "--version")
    assert version.returncode == 0 and version.stdout.startswith("hasyncd "), version
    for unit in UNITS:
        assert (staged / "etc/systemd/system" / unit).read_text() == (
            ROOT / "systemd" / unit
        ).read_text()
    assert "u hasyncd" in (staged / "usr/lib/sysusers.d/hasyncd.conf").read_text()
    assert "/etc/hasyncd" in (staged / "usr/lib/tmpfiles.d/hasyncd.conf").read_text()
    # The example config passes check-config once the hooks are installed (paths
    # resolved inside the staging root) and a key exists.
    example = (staged / "etc/hasyncd/hasyncd.toml.example").read_text()
    for hook in ("vip", "record"):
        assert os.access(staged / "etc/hasyncd/hooks" / hook, os.X_OK)
    config = staged / "etc/hasyncd/hasyncd.toml"
    config.write_text(example.replace('"/etc/hasyncd/', f'"{staged}/etc/hasyncd/'))
    assert run(str(binary), "keygen", str(staged / "etc/hasyncd/psk")).returncode == 0
    checked = run(str(binary), "check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr


def installed_unit(tmp_path: Path, staged: Path, unit: str) -> Path:
    """An installed unit with its binary path pointing into the staging root."""
    text = (staged / "etc/systemd/system" / unit).read_text()
    binary = staged / "opt/hasyncd/bin/hasyncd"
    out = tmp_path / unit
    out.write_text(text.replace("/usr/local/bin/hasyncd", str(binary)))
    return out


@needs_analyze
@pytest.mark.slow
@pytest.mark.parametrize("unit", UNITS)
def test_units_verify_clean_and_are_hardened(tmp_path: Path, staged: Path, unit: str) -> None:
    path = installed_unit(tmp_path, staged, unit)
    name = "hasyncd@fw-a.service" if "@" in unit else unit
    verify = run("systemd-analyze", "verify", str(path.parent / name))
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    sec = run(
        "systemd-analyze",
        "security",
        "--offline=true",
        f"--threshold={int(MAX_EXPOSURE * 10)}",
        str(path.parent / name),
    )
    summary = sec.stdout.strip().splitlines()[-1]
    assert sec.returncode == 0, summary
    exposure = float(summary.split("level for")[1].split(":")[1].split()[0])
    assert exposure <= MAX_EXPOSURE, summary
    print(f"{name}: {summary}")


def test_units_run_unprivileged_and_do_not_loop_on_config_errors() -> None:
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        lines = {line.strip() for line in text.splitlines()}
        for want in (
            "User=hasyncd",
            "RestartPreventExitStatus=2",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "CapabilityBoundingSet=",
            "Type=notify",
        ):
            assert want in lines, (unit, want)


PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
MDWE_WRAPPER = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:\n"
    "    sys.exit('PR_SET_MDWE failed')\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    pid = os.fork()
    if pid == 0:  # probe in a child: MDWE cannot be undone
        os._exit(0 if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0 else 1)
    return os.waitpid(pid, 0)[1] == 0


@pytest.mark.integration
@pytest.mark.skipif(not mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_the_daemon_works_under_memory_deny_write_execute(tmp_path: Path) -> None:
    # MemoryDenyWriteExecute=yes is PR_SET_MDWE: no mapping may become writable
    # and executable.  Run a pair under it: handshakes (cryptography), records,
    # replication and a failover.
    cluster = LabCluster.loopback(tmp_path)
    for node in cluster.nodes.values():
        node.prefix = (sys.executable, "-c", MDWE_WRAPPER)
    cluster.start()
    try:
        primary, secondary = cluster.wait_pair()
        rid, rec = samples.web_session(1, time.time())
        assert primary.client.put(f"/v1/records/sslvpn_web_session/{rid}", rec)[0] == 201
        path = f"/v1/records/sslvpn_web_session/{rid}"
        cluster.wait(lambda: secondary.client.get(path)[0] == 200, 5, "replication")
        primary.kill()
        cluster.wait(lambda: secondary.role() == "primary", 5, "failover")
        assert secondary.client.get(path)[0] == 200
    finally:
        for node in cluster.nodes.values():
            node.kill()


@pytest.mark.skipif(not mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_the_mdwe_wrapper_really_denies_writable_executable_memory() -> None:
    probe = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)"
    assert run(sys.executable, "-c", probe).returncode == 0  # allowed without the wrapper
    denied = run(sys.executable, "-c", MDWE_WRAPPER, sys.executable, "-c", probe)
    assert denied.returncode != 0 and "PermissionError" in denied.stderr, denied
