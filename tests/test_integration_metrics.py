"""``GET /metrics`` of a real daemon, parsed with prometheus-client's own parser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hasyncd.core.counters import COUNTERS

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_families() -> dict[str, str]:
    """The metrics table of README.md: family name -> its labels as documented."""
    text = README.read_text()
    section = text[text.index("### Metrics") :]
    section = section[: section.index("\n## ")]
    rows = re.findall(
        r"^\| `(hasyncd_[a-z_]+|process_[a-z_]+)(?:\{([a-z_, ]*)\})?` \|", section, re.M
    )
    return dict(rows)


def test_every_documented_family_is_present_from_start_up(make_cluster: Any) -> None:
    cluster = make_cluster()
    _primary, secondary = cluster.wait_pair()
    code, text = secondary.client.get("/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    documented = readme_families()
    assert len(documented) >= 30, documented
    for name, labels in documented.items():
        # The parser names a counter family without its _total suffix.
        fam = families.get(name) or families.get(name.removesuffix("_total"))
        assert fam is not None, f"{name} is in README but not in /metrics"
        assert fam.documentation and "core counter" not in fam.documentation, name
        want = {x.strip() for x in labels.split(",") if x.strip()}
        for sample in fam.samples:
            assert set(sample.labels) - {"quantile", "le"} <= want, (name, sample.labels)
    # Every core counter is documented and present at start-up, unlabelled ones at 0.
    for name, spec in COUNTERS.items():
        full = f"hasyncd_{name}_total"
        assert full in documented, f"{full} is not in README's metrics table"
        fam = families[f"hasyncd_{name}"]
        assert fam.type == "counter"
        if spec.label is None:
            assert [s.name for s in fam.samples if s.name == full] == [full]
    assert "label" not in {k for f in families.values() for s in f.samples for k in s.labels}
    # The collection before the start-up heap is frozen was timed: a full one (generation 2).
    gc_counts = {
        s.labels["generation"]: s.value
        for s in families["hasyncd_gc_pause_seconds"].samples
        if s.name == "hasyncd_gc_pause_seconds_count"
    }
    assert gc_counts.get("2", 0) >= 1, gc_counts
    build = families["hasyncd_build_info"]
    assert build.samples[0].labels["version"]
    assert families["process_resident_memory_bytes"].samples[0].value > 0
