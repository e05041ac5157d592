"""A device vendor is one registry entry (gpuacct.config.devices.VENDORS) plus its module: a
made-up fourth vendor, added here by that one entry, is configured, validated, opened, read
and numbered after NVIDIA's GPUs like the three real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.devices.node import open_devices
from gpuacct.config import VENDORS, ConfigError, Vendor, settings_from_mapping
from tests.fixtures.acme_devices import AcmeSettings
from tests.fixtures.gpus import FakeGpus, device


@pytest.fixture
def acme(monkeypatch: pytest.MonkeyPatch) -> None:
    # The whole of adding a vendor, as far as gpuacct is concerned: this one entry.
    monkeypatch.setitem(VENDORS, "acme", Vendor(AcmeSettings, "tests.fixtures.acme_devices"))


def boards(tmp_path: Path) -> Path:
    path = tmp_path / "boards.json"
    path.write_text(json.dumps([{"uuid": "ACME-0", "model": "Acme X1", "busy": 0.5,
                                 "pids": [4242]}]))
    return path


def nvidia(tmp_path: Path) -> dict[str, object]:
    gpus = FakeGpus([device(0), device(1)], tmp_path / "gpus.json")
    return {"backend": "fake", "fake_file": str(gpus.path)}


def test_a_fourth_vendor_is_configured_opened_and_numbered_after_the_others(
        acme: None, tmp_path: Path) -> None:
    settings = settings_from_mapping({"exporter": {
        "backends": ["nvml", "acme"], "nvml": nvidia(tmp_path),
        "acme": {"boards_file": str(boards(tmp_path))}}}).exporter
    assert settings.device("acme", AcmeSettings).boards_file == tmp_path / "boards.json"
    devices = open_devices(settings)
    assert devices is not None and [name for name, _ in devices.backends] == ["nvml", "acme"]
    reading, collectors = devices.read()
    assert reading is not None and collectors["acme"][0] is True
    assert [(d.index, d.vendor, d.model) for d in reading.devices][2:] == [(2, "acme", "Acme X1")]
    assert reading.devices[2].units[0].label == "2"  # its unit follows the node's numbering
    assert reading.devices[2].units[0].processes[0].pid == 4242


def test_auto_reads_the_fourth_vendor_where_its_library_is_there(acme: None,
                                                                 tmp_path: Path) -> None:
    def auto(**acme_section: object) -> list[str]:
        settings = settings_from_mapping({"exporter": {
            "nvml": {"backend": "off"}, "dcmi": {"library": "/nonexistent/libdcmi.so"},
            "acme": acme_section}}).exporter
        devices = open_devices(settings)
        return [name for name, _ in devices.backends] if devices else []

    assert "acme" not in auto()  # no Acme library on this node
    assert auto(boards_file=str(boards(tmp_path)))[-1] == "acme"  # last: the registry's order


def test_the_fourth_vendors_section_is_checked_like_any_other(acme: None) -> None:
    with pytest.raises(ConfigError) as bad:
        settings_from_mapping({"exporter": {"acme": {"boards": "x"}}})
    assert str(bad.value) == "config: exporter.acme.boards: unknown key"
    with pytest.raises(ConfigError) as unknown:
        settings_from_mapping({"exporter": {"backends": ["acme", "zeta"]}})
    assert "zeta is no backend: expected auto, or a list of nvml, amdsmi, dcmi, acme" in str(
        unknown.value)


def test_without_its_entry_the_vendor_is_unknown() -> None:
    with pytest.raises(ConfigError) as unknown:
        settings_from_mapping({"exporter": {"acme": {}}})
    assert str(unknown.value) == "config: exporter.acme: unknown key"
