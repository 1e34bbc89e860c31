"""The `stackline` command as a person uses it: bad configurations refuse to start and say why."""

from __future__ import annotations

import stat
from pathlib import Path

import yaml

from tests.conftest import free_port
from tests.support import run_stackline, write_gateway, write_plant


def test_keygen_writes_a_private_and_a_public_key(tmp_path: Path) -> None:
    result = run_stackline("keygen", "--out", str(tmp_path / "c1.key"))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "c1.key").stat().st_mode) == 0o600
    assert (tmp_path / "c1.key.pub").read_text().startswith("stackline-ed25519-public ")
    again = run_stackline("keygen", "--out", str(tmp_path / "c1.key"))
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr


def test_collector_with_an_unknown_key_refuses_to_start(tmp_path: Path) -> None:
    path = write_plant(tmp_path, grpc_port=free_port())
    plant = yaml.safe_load(path.read_text())
    plant["devices"][1]["timeout"] = 100  # the field is timeout_ms
    path.write_text(yaml.safe_dump(plant))
    result = run_stackline("collector", "run", "--config", str(path))
    assert result.returncode == 2
    assert "plant.yaml: devices[1].timeout: unknown key" in result.stderr
    assert "did not start" in result.stderr


def test_collector_without_its_key_file_refuses_to_start(tmp_path: Path) -> None:
    path = write_plant(tmp_path, grpc_port=free_port())
    (tmp_path / "collector.key").unlink()
    result = run_stackline("collector", "run", "--config", str(path))
    assert result.returncode == 2
    assert "collector.key" in result.stderr


def test_simulator_refuses_an_impossible_register_map(tmp_path: Path) -> None:
    path = write_plant(tmp_path, grpc_port=free_port())
    plant = yaml.safe_load(path.read_text())
    profile = yaml.safe_load(Path(plant["devices"][0]["profile"]).read_text())
    profile["points"][1]["address"] = 101  # nox now overlaps so2 (100..101)
    broken = tmp_path / "broken-profile.yaml"
    broken.write_text(yaml.safe_dump(profile))
    plant["devices"][0]["profile"] = str(broken)
    path.write_text(yaml.safe_dump(plant))
    result = run_stackline("simulate", "--config", str(path))
    assert result.returncode == 2
    assert "broken-profile.yaml: points[1]: point 'nox'" in result.stderr
    assert "overlaps point 'so2'" in result.stderr


def test_gateway_with_a_bad_field_refuses_to_start(tmp_path: Path) -> None:
    path = write_gateway(tmp_path, grpc_port=free_port())
    config = yaml.safe_load(path.read_text())
    config["limits"] = {"max_blocks_per_batch": 0}
    path.write_text(yaml.safe_dump(config))
    result = run_stackline("gateway", "run", "--config", str(path))
    assert result.returncode == 2
    assert "gateway.yaml: limits.max_blocks_per_batch" in result.stderr


def test_enrolling_a_small_order_key_is_refused(tmp_path: Path) -> None:
    gateway = write_gateway(tmp_path, grpc_port=free_port())
    # the identity point: a small-order public key that would accept forged signatures
    bad = tmp_path / "bad.pub"
    bad.write_text("stackline-ed25519-public AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= x\n")
    result = run_stackline("gateway", "enroll", "--config", str(gateway), "--collector-id", "c1",
                           "--public-key", str(bad))
    assert result.returncode == 2
    assert "small-order" in result.stderr


def test_gateway_with_a_missing_tls_file_refuses_to_start(tmp_path: Path) -> None:
    path = write_gateway(tmp_path, grpc_port=free_port())
    config = yaml.safe_load(path.read_text())
    config["mqtt"] = {"host": "127.0.0.1", "port": free_port(), "tls": {"ca_file": "nope/ca.crt"}}
    path.write_text(yaml.safe_dump(config))
    result = run_stackline("gateway", "run", "--config", str(path))
    assert result.returncode == 2
    assert "gateway.yaml: mqtt.tls.ca_file: no such file" in result.stderr


def test_a_busy_grpc_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = write_gateway(tmp_path, grpc_port=taken.getsockname()[1])
        result = run_stackline("gateway", "run", "--config", str(path))
    assert result.returncode == 2
    assert "cannot listen for gRPC" in result.stderr
