"""Test certificates made by the fleet's own tool, provisioning/fleet-pki.sh (openssl)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PKI_TOOL = Path(__file__).resolve().parent.parent / "provisioning" / "fleet-pki.sh"


def pki(directory: Path, *args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    subprocess.run(["bash", str(PKI_TOOL), args[0], str(directory), *args[1:]], check=True,
                   capture_output=True, timeout=60)


def make_pki(directory: Path, clients: tuple[str, ...] = ("device",)) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1, client certificates, and an unrelated CA."""
    pki(directory, "ca")
    pki(directory, "server", "127.0.0.1")
    for name in clients:
        pki(directory, "client", name)
    pki(directory / "other", "ca")
    files = {"ca.pem": directory / "ca.pem", "server.pem": directory / "server.pem",
             "server.key": directory / "server.key", "other-ca.pem": directory / "other" / "ca.pem"}
    for name in clients:
        files[f"{name}.pem"], files[f"{name}.key"] = directory / f"{name}.pem", directory / f"{name}.key"
    return files
