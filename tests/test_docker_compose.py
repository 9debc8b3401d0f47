"""No Docker engine runs here: check that the compose file parses and that every command,
path and file it names exists (the image's COPY sources, the configs `ledger init --docker` writes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_names_only_what_exists(tmp_path):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    nodes = {name: spec for name, spec in services.items() if name.startswith("node")}
    assert sorted(nodes) == ["node0", "node1", "node2", "node3"]
    assert "postgres" in services and services["postgres"]["profiles"] == ["postgres"]

    # The files the services mount are the ones `ledger init --docker` writes.
    out = tmp_path / "testnet-docker"
    subprocess.run([sys.executable, "-m", "node.cli", "init", "--nodes", "4", "--out", str(out), "--docker"],
                   cwd=ROOT, check=True, capture_output=True)
    ports = set()
    for name, spec in nodes.items():
        assert spec["volumes"] == ["./testnet-docker:/testnet"]
        command = spec["command"]
        assert command[0] == "node" and command[1] == "--config"
        config_path = out / Path(command[2]).relative_to("/testnet")
        settings = tomllib.loads(config_path.read_text())
        assert settings["data_dir"] == f"/testnet/{name}"
        assert settings["api_host"] == "0.0.0.0" and settings["api_port"] == 8000
        assert sorted(settings["peers"]) == sorted(f"{other}:9000" for other in nodes if other != name)
        assert (out / name / "node_key").exists()
        host_port = spec["ports"][0].split(":")
        assert host_port[0] == "127.0.0.1" and host_port[2] == "8000"
        ports.add(host_port[1])
    assert len(ports) == 4
    # The same network as `make testnet`: four BFT validators, one per node key.
    genesis = json.loads((out / "genesis.json").read_text())
    assert genesis["engine"]["name"] == "bft" and len(genesis["engine"]["params"]["validators"]) == 4

    # The image: every COPY source exists and the entry point is a declared console script.
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    entry = re.search(r'ENTRYPOINT \["(\w+)"\]', dockerfile).group(1)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry in scripts
    # The subcommand the services run exists in that script's CLI.
    help_text = subprocess.run([sys.executable, "-m", "node.cli", "node", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    assert "--config" in help_text
