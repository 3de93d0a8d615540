"""Thousands of malformed payloads at every command topic of a running agent (real Mosquitto).

Every message that carries a response topic must get exactly one answer with
`ok` and either `result` or `error`; afterwards the agent still captures,
detects and answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import MqttConfig, validate_config
from agent.fleet.fleet import FleetClient
from agent.runtime import Runtime
from tests.broker import Mosquitto
from tests.helpers import wait_for

DEVICE = "dev-fuzz"
COMMANDS = ["ping", "get_config", "set_config", "camera", "snapshot", "restart_pipeline", "get_stats",
            "requeue_dead_letters", "unknown-x"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
# Envelopes that are nearly right, so the argument checks behind the envelope check get exercised too.
near_envelopes = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=80), st.integers(), st.just("ok-id"))},
    optional={"args": st.one_of(json_values, st.dictionaries(
        st.sampled_from(["action", "name", "settings", "camera", "max_bytes", "quality", "config", "x"]),
        json_values, max_size=4)), "expires_at": st.one_of(st.integers(), st.floats(), st.text(max_size=5))},
)
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_envelopes.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=60_000, max_value=90_000).map(lambda n: b"[" * n),  # over the size limit
    st.text(max_size=100).map(str.encode),
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, clip_dir: Path) -> Iterator[tuple[Runtime, FleetClient]]:
    from agent.demo.clips import write_clip

    tmp = tmp_path_factory.mktemp("fuzz")
    clip = write_clip(clip_dir / "fuzz.mp4", seconds=1.0, seed=31)
    broker = Mosquitto(tmp / "broker").start()
    runtime = Runtime(validate_config({
        "device": {"id": DEVICE}, "cameras": [{"name": "cam", "source": str(clip), "fps": 10}],
        "storage": {"path": str(tmp / "data")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect": {"initial_s": 0.05, "max_s": 0.3}},
    }))
    runtime.start()
    fleet = FleetClient(MqttConfig(host="127.0.0.1", port=broker.port))
    wait_for(runtime.link.connected.is_set, what="device connected")
    yield runtime, fleet
    fleet.close()
    runtime.stop()
    broker.stop()


@pytest.mark.parametrize("name", COMMANDS)
def test_malformed_payloads_are_each_answered_and_never_break_the_agent(
        agent: tuple[Runtime, FleetClient], name: str) -> None:
    runtime, fleet = agent
    sent = runtime.channel.counts["received"]

    @settings(max_examples=500, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(payload=payloads)
    def one(payload: bytes) -> None:
        answer = fleet.request(DEVICE, name, payload, timeout=10)
        assert answer is not None, f"no answer to {payload[:80]!r}"
        assert isinstance(answer["ok"], bool) and (("result" in answer) != ("error" in answer))
        if not answer["ok"]:
            assert answer["error"]["code"] and answer["error"]["message"]

    one()
    counts = runtime.channel.counts
    assert counts["received"] - sent >= 400 and counts["failed"] == 0  # no handler blew up
    assert runtime.channel._thread.is_alive() and runtime.link.connected.is_set()
    assert fleet.command(DEVICE, "ping")["ok"]
    frames = runtime.cameras["cam"].frames_captured
    wait_for(lambda: runtime.cameras["cam"].frames_captured > frames, what="still capturing")


NUMERIC_SETTINGS = [("storage", "max_age_hours"), ("storage", "max_size_mb"), ("storage", "outbox_max_rows"),
                    ("storage", "outbox_max_mb"), ("storage", "retention_interval_s"), ("telemetry", "interval_s"),
                    ("model", "score_threshold"), ("model", "iou_threshold"), ("model", "max_batch")]
EXTREMES = ["1e999", "-1e999", "NaN", "-0", "1e13", "1" + "0" * 30, "-" + "9" * 25]


def test_numeric_extremes_in_real_settings_are_refused_and_the_store_keeps_writing(
        agent: tuple[Runtime, FleetClient]) -> None:
    runtime, fleet = agent
    version = runtime.config_service.applied_version
    for n, ((section, key), raw) in enumerate((s, v) for s in NUMERIC_SETTINGS for v in EXTREMES):
        # Raw JSON text: 1e999 and NaN are what a hand-written or buggy fleet tool would send.
        payload = f'{{"id": "extreme-{n}", "args": {{"config": {{"{section}": {{"{key}": {raw}}}}}}}}}'
        answer = fleet.request(DEVICE, "set_config", payload, timeout=10)
        assert answer is not None and answer["ok"] is False, (section, key, raw, answer)
        assert answer["error"]["code"] == "rejected"
        assert any(d["path"] == f"{section}.{key}" for d in answer["error"]["details"]), answer["error"]
    assert runtime.config_service.applied_version == version
    assert runtime.store.running and runtime.store.write_errors == 0 and runtime.store.retention_errors == 0
    committed = runtime.store.committed_rows
    wait_for(lambda: runtime.store.committed_rows > committed, what="detections still committed")
