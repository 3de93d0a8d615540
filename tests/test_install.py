"""install.sh from this checkout into a staging root (`--root DIR`): real venv, real pip, the real
unit checked by the real `systemd-analyze`. (Booting it under systemd is the nspawn test's job.)"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "install.sh"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(INSTALL), *args], capture_output=True, text=True, timeout=600, check=check)


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(str(path.readlink()).encode())
        elif path.is_file():
            digest.update(f"{path.stat().st_mode:o}".encode() + path.read_bytes())
    return digest.hexdigest()


def test_install_sh_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it)")
    result = subprocess.run(["shellcheck", str(INSTALL), str(ROOT / "provisioning" / "fleet-pki.sh")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dry_run_changes_nothing_and_says_what_it_would_do(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    out = run("--root", str(stage), "--dry-run", "--device-id", "dry-1").stdout
    assert list(stage.iterdir()) == []
    assert "would: " in out and "python3 -m venv" in out and "would run: useradd" in out
    assert run("--root", str(stage), "--device-id", "bad id!", check=False).returncode != 0


def test_staged_install_is_valid_idempotent_and_uninstalls_to_config_and_data(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    first = run("--root", str(stage), "--device-id", "gate-7", "--broker", "broker.local:8883")
    assert "valid" in first.stdout  # install.sh checked the config it wrote with the venv it made
    config = stage / "etc" / "edge-agent" / "config.yaml"
    assert config.stat().st_mode & 0o777 == 0o640
    agent = stage / "opt" / "edge-agent" / "venv" / "bin" / "edge-agent"
    check = subprocess.run([str(agent), "check", "--config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = config.read_text()
    assert "id: gate-7" in text and "host: broker.local" in text and "port: 8883" in text
    assert "would run: useradd --system" in first.stdout and "would run: systemctl enable edge-agent" in first.stdout

    unit = stage / "etc" / "systemd" / "system" / "edge-agent.service"
    if shutil.which("systemd-analyze") is not None:
        # the unit as installed, its ExecStart pointed at the staged venv (verify wants it executable)
        staged = tmp_path / "edge-agent.service"
        staged.write_text(unit.read_text().replace("/opt/edge-agent/venv", str(agent.parents[1])))
        verify = subprocess.run(["systemd-analyze", "verify", str(staged)], capture_output=True, text=True)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
        security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(staged)],
                                  capture_output=True, text=True)
        exposure = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout).group(1))
        print(f"systemd-analyze security exposure: {exposure}")
        assert exposure <= 2.0, security.stdout  # "OK"; measured 1.6

    before = tree_hash(stage)
    config_bytes = config.read_bytes()
    again = run("--root", str(stage), "--device-id", "gate-7", "--broker", "broker.local:8883")
    assert again.stdout.strip().endswith("no change"), again.stdout
    assert tree_hash(stage) == before and config.read_bytes() == config_bytes

    config.write_text(config_bytes.decode() + "# an operator's edit\n")
    edited = run("--root", str(stage), "--device-id", "other", "--broker", "elsewhere")
    assert "kept as it is" in edited.stdout and config.read_text().endswith("# an operator's edit\n")

    edited_hash = tree_hash(stage)
    dry = run("--root", str(stage), "--uninstall", "--dry-run")
    assert "would: rm -rf" in dry.stdout and tree_hash(stage) == edited_hash
    data = stage / "var" / "lib" / "edge-agent"
    data.mkdir(parents=True)
    (data / "edge-agent.db").write_bytes(b"stored detections")
    gone = run("--root", str(stage), "--uninstall")
    assert "would run: userdel edge-agent" in gone.stdout
    left = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    assert left == ["etc/edge-agent/config.yaml", "var/lib/edge-agent/edge-agent.db"]
    assert run("--root", str(stage), "--purge", check=False).returncode != 0  # not without --yes (no TTY)
    run("--root", str(stage), "--purge", "--yes")
    assert not any(p.is_file() for p in stage.rglob("*"))
