"""install.sh on a really booted systemd: a debootstrapped Debian under systemd-nspawn.

No host systemd or D-Bus here, hence `--register=no --keep-unit`, and the container is driven with
`nsenter` into its PID 1's namespaces. The Debian tree is made once per machine (about a minute,
300 MB) and booted `--ephemeral`, so every run starts from the same clean system. The agent is
installed offline from a wheelhouse built from this checkout (`install.sh --wheelhouse`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("/var/tmp/edge-agent-nspawn")
DEBIAN = CACHE / "bookworm"
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs debootstrap and systemd-container)"
    return None


def _mirror() -> str:
    for sources in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if sources.is_file():
            found = re.search(r"(?:URIs:\s*|deb\s+)(https?://\S+/debian)\b", sources.read_text())
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


def debian_tree() -> Path:
    """The cached minimal Debian with systemd and Python, made on first use."""
    if (DEBIAN / ".complete").is_file():
        return DEBIAN
    building = CACHE / "building"
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(building),
                    _mirror()], check=True, capture_output=True, timeout=600)
    (building / ".complete").write_text("ok\n")
    shutil.rmtree(DEBIAN, ignore_errors=True)
    building.rename(DEBIAN)
    return DEBIAN


class Container:
    def __init__(self, tree: Path, wheels: Path, log: Path) -> None:
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(tree), "-M", f"edge-test-{os.getpid()}", "--register=no", "--keep-unit",
             "--ephemeral", f"--bind-ro={ROOT}:/mnt/src", f"--bind-ro={wheels}:/mnt/wheels",
             f"--bind-ro={wheels.with_name('wheels-next')}:/mnt/wheels-next", "--boot",
             "--console=pipe"],
            stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.pid1 = 0

        def booted() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn ended: {log.read_text(errors='replace')[-2000:]}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids and Path(f"/proc/{pids[0]}/root/run/systemd/private").exists():
                self.pid1 = int(pids[0])
                return True
            return False

        wait_for(booted, timeout=60, what="the container's systemd")
        wait_for(lambda: self.run("systemctl", "is-system-running", check=False).stdout.strip()
                 in ("running", "degraded"), timeout=60, what="the container booted")

    def run(self, *cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *cmd], capture_output=True, text=True,
                              check=check, timeout=timeout)

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run("sh", "-c", script, check=check, timeout=timeout)

    def show(self, prop: str) -> str:
        return self.run("systemctl", "show", "edge-agent", "-p", prop, "--value").stdout.strip()

    def stop(self) -> None:
        if self.pid1:
            self.run("systemctl", "poweroff", check=False, timeout=30)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    if (why := _missing()) is not None:
        pytest.skip(why)
    work = tmp_path_factory.mktemp("boot")
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True, timeout=600)
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # pip's in-tree build
    shutil.copytree(wheels, work / "wheels-next")  # "a new release": the same wheels and one more file
    (work / "wheels-next" / "RELEASE-NOTES.txt").write_text("next\n")
    box = Container(debian_tree(), wheels, work / "nspawn.log")
    yield box
    box.stop()


@pytest.mark.timeout(900)
def test_install_runs_a_supervised_service_that_systemd_restarts_and_uninstall_removes(
        container: Container) -> None:
    install = "cd /mnt/src && ./install.sh --wheelhouse /mnt/wheels --device-id boot-1"
    first = container.sh(install)
    assert "device id:   boot-1" in first.stdout and "health page: http://" in first.stdout, first.stdout
    assert container.run("systemctl", "is-active", "edge-agent").stdout.strip() == "active"
    health = container.run("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                           "'http://127.0.0.1:8080/healthz', timeout=10).read().decode())")
    assert '"ok": true' in health.stdout
    assert container.show("User") == "edge-agent"
    assert "cameras running" in container.show("StatusText")  # STATUS= from the agent

    # killed outright: systemd starts it again
    main = container.show("MainPID")
    container.run("systemctl", "kill", "-s", "KILL", "edge-agent")
    wait_for(lambda: container.show("NRestarts") == "1" and container.show("ActiveState") == "active"
             and container.show("MainPID") not in ("0", main), timeout=60, what="restarted after kill -9")

    # hung: no more watchdog pings (the process is stopped whole here; a pipeline stuck while the rest
    # runs is tests/test_sd_notify.py's case), so systemd kills and restarts it
    container.sh("mkdir -p /etc/systemd/system/edge-agent.service.d && printf '[Service]\\nWatchdogSec=4\\n' "
                 "> /etc/systemd/system/edge-agent.service.d/watchdog-test.conf && systemctl daemon-reload "
                 "&& systemctl restart edge-agent")
    wait_for(lambda: container.show("ActiveState") == "active", timeout=60, what="active with the short watchdog")
    main = container.show("MainPID")
    started = time.monotonic()
    container.sh(f"kill -STOP {main}")
    wait_for(lambda: "Failed with result 'watchdog'" in container.run(
        "journalctl", "-u", "edge-agent", "--no-pager", check=False).stdout, timeout=60, what="the watchdog")
    assert time.monotonic() - started < 30
    wait_for(lambda: container.show("ActiveState") == "active" and container.show("MainPID") != main,
             timeout=60, what="restarted after the watchdog")
    container.sh("rm -r /etc/systemd/system/edge-agent.service.d && systemctl daemon-reload")

    again = container.sh(install)
    assert again.stdout.strip().splitlines()[-1] == "no change", again.stdout

    main = container.show("MainPID")
    upgrade = container.sh("cd /mnt/src && ./install.sh --wheelhouse /mnt/wheels-next --device-id boot-1")
    assert "+ mv -T /opt/edge-agent/venv.new /opt/edge-agent/venv" in upgrade.stdout
    assert container.show("ActiveState") == "active" and container.show("MainPID") != main  # restarted once
    assert len(container.sh("ls -d /opt/edge-agent/venv-*").stdout.split()) == 1  # the old venv is gone

    container.sh("cd /mnt/src && ./install.sh --uninstall")
    assert container.run("systemctl", "cat", "edge-agent", check=False).returncode != 0
    assert container.run("getent", "passwd", "edge-agent", check=False).returncode == 2
    assert container.sh("test -f /etc/edge-agent/config.yaml && test -f /var/lib/edge-agent/edge-agent.db "
                        "&& test ! -e /opt/edge-agent", check=False).returncode == 0
