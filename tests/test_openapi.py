"""proto/openapi.yaml: a valid OpenAPI 3.1 document, served by the daemon, and true of it.

schemathesis generates requests from the document against a live daemon
(TCP API on loopback) and checks every response: no 5xx, a documented status
code, a body that conforms to its schema and content type.  The batch body
formats are taught to it by tests/schemathesis_hooks.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from hasyncd.daemon.api import ROUTES
from hasyncd.lab import LabCluster, free_port

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "proto" / "openapi.yaml"
# Examples per operation: enough to reach every documented error path quickly.
EXAMPLES = 100


def spec() -> dict[str, Any]:
    return dict(yaml.safe_load(SPEC.read_text()))


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = spec()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_route_of_the_api_is_documented() -> None:
    documented = {
        (method.upper(), path)
        for path, ops in spec()["paths"].items()
        for method in ops
        if method in ("get", "put", "post", "delete")
    }
    assert {(method, path) for method, path, _ in ROUTES} == documented


@pytest.mark.integration
def test_schemathesis_finds_no_undocumented_response(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "lab").mkdir()
    cluster = LabCluster.loopback(tmp_path / "lab")
    cluster["fw-a"].extra = {"api": {"listen": f"127.0.0.1:{port}"}}
    try:
        run_schemathesis(cluster, port, tmp_path)
    finally:
        for node in cluster.nodes.values():
            node.kill()


def run_schemathesis(cluster: LabCluster, port: int, tmp_path: Path) -> None:
    cluster.start()
    primary, secondary = cluster.wait_pair()
    assert primary.name == "fw-a"
    url = f"http://127.0.0.1:{port}"
    code, served = primary.client.get("/v1/openapi.json")
    assert code == 200
    assert served == json.loads(json.dumps(spec()))
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None
    report = tmp_path / "junit.xml"
    # Only the primary answers on that port; without its secondary a failover is
    # refused (409) instead of handing the role away half-way through the run.
    secondary.kill()
    proc = subprocess.run(
        [
            st,
            "run",
            f"{url}/v1/openapi.json",
            "--url",
            url,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples",
            str(EXAMPLES),
            # An event stream never ends: every generated request would wait for the
            # request timeout.  Its refusals (Last-Event-ID, shutdown) are tested in
            # test_api_defects.py and test_integration_lifecycle.py.
            "--exclude-path",
            "/v1/events",
            "--header",
            f"Authorization: Bearer {cluster.api_token.read_text().strip()}",
            "--seed",
            "1",
            "--request-timeout",
            "20",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"},
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert "passed" in proc.stdout.lower(), tail
    print(proc.stdout[-1500:])
