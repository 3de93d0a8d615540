"""The quality controller on recorded signal sequences, and the profiles it reads (no agent running).

Time is the sequence's own: one reading per second, as the loop takes them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.config import ConfigError, validate_config
from agent.pipeline.quality import QualityController, Reading
from agent.profiles import PRESETS, ProfileError, auto_preset, load_profile, parse_profile, shipped_levels

SLA = 250.0
HOT = Reading(result_p95_ms=400.0, cpu_percent=50)
OK = Reading(result_p95_ms=60.0, cpu_percent=40)  # well below 0.7 × SLA
NEAR = Reading(result_p95_ms=200.0, cpu_percent=40)  # under the SLA, not clear with margin


def controller(profile_name: str = "cpu", cameras: dict[str, int] | None = None, **kw) -> QualityController:
    profile = load_profile(profile_name)
    c = QualityController(profile, list(profile.levels), SLA, kw.get("mode", "auto"), kw.get("level"), 0.0)
    c.set_cameras(cameras or {"a": 0})
    return c


def run(c: QualityController, readings: list[Reading], start: float = 0.0) -> tuple[list, float]:
    """Feed one reading per second; the transitions made and the time after the last."""
    out = []
    t = start
    for r in readings:
        t += 1.0
        change = c.update(r, t)
        if change is not None:
            out.append((t, change))
    return out, t


def test_sustained_latency_steps_down_one_level_with_the_figures_in_the_reason() -> None:
    c = controller()
    assert c.level.name == "high"  # the cpu preset's default
    changes, _ = run(c, [HOT] * 4)
    assert len(changes) == 1
    _t, change = changes[0]
    assert (change.from_level, change.to_level, change.direction, change.signal) == ("high", "medium", "down",
                                                                                     "latency")
    assert "p95 capture→result 400 ms > SLA 250 ms for 3 s" in change.reason
    assert c.level.name == "medium" and c.status()["reason"] == change.reason


def test_a_pressure_shorter_than_the_hold_time_changes_nothing() -> None:
    c = controller()
    changes, _ = run(c, [HOT, HOT, OK, HOT, HOT, OK] * 5)
    assert changes == []


def test_cooldown_then_a_fresh_hold_before_the_next_step_down() -> None:
    c = controller()
    changes, _ = run(c, [HOT] * 30)
    times = [t for t, _ in changes]
    # 3 s hold; then 5 s cooldown + 3 s hold again per step, down to the floor and no further
    assert times == [4.0, 12.0, 20.0]  # first seen at 1 s
    assert [ch.to_level for _, ch in changes] == ["medium", "low", "minimal"]
    assert c.level.name == "minimal" and "at the floor" in c.waiting


def test_steps_up_only_after_the_clear_period_one_level_at_a_time_to_the_ceiling() -> None:
    c = controller(level="minimal")
    changes, t = run(c, [OK] * 29)
    assert changes == []  # 30 s clear needed
    changes, t = run(c, [OK] * 200, t)
    assert [ch.to_level for _, ch in changes] == ["low", "medium", "high"]  # the ceiling is the default
    assert all(ch.signal == "clear" and "all clear for 30 s" in ch.reason for _, ch in changes)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(changes)]
    assert all(g >= 35 for g in gaps)  # cooldown 5 s + a fresh 30 s clear period


def test_a_signal_oscillating_around_the_threshold_does_not_flap() -> None:
    c = controller(level="medium")
    just_over, just_under = Reading(result_p95_ms=260), Reading(result_p95_ms=240)
    changes, _ = run(c, [just_over, just_under] * 150)  # 5 minutes
    assert changes == []
    assert "near" in c.waiting  # under the SLA but not clear with margin: no step up either


def test_a_step_up_undone_soon_doubles_the_wait_before_the_next_bounded() -> None:
    c = controller(level="medium")
    waits_after_undo = []
    t = 0.0
    for _ in range(6):
        while c.level.name != "high":  # clear until one step up, to the ceiling
            t += 1.0
            c.update(OK, t)
        changes, t = run(c, [HOT] * 9, t)  # undone as soon as the cooldown allows
        assert [ch.direction for _, ch in changes] == ["down"]
        waits_after_undo.append(c.status()["up_wait_s"])
    assert waits_after_undo == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]  # doubled, bounded by up_after_max_s


def test_a_step_up_that_holds_resets_the_wait() -> None:
    c = controller(level="low")
    t = 0.0
    _, t = run(c, [OK] * 40, t)  # up to medium
    _, t = run(c, [HOT] * 4, t)  # undone at once: wait doubles
    assert c.status()["up_wait_s"] == 60.0
    _, t = run(c, [OK] * 70, t)  # up again after 60 s
    assert c.level.name == "medium"
    _, t = run(c, [NEAR] * 130, t)  # holds past the undo window (neither clear nor pressure)
    assert c.status()["up_wait_s"] == 30.0


def test_lower_priority_cameras_are_degraded_first_and_recovered_last() -> None:
    c = controller(cameras={"gate": 1, "yard": 0, "shed": 0})
    changes, t = run(c, [HOT] * 12)
    assert [(ch.cameras, ch.to_level) for _, ch in changes] == [(("shed", "yard"), "medium"), (("gate",), "medium")]
    assert c.status()["cameras"] == {"gate": "medium", "shed": "medium", "yard": "medium"}
    changes, t = run(c, [HOT] * 8, t)
    assert c.status()["cameras"] == {"gate": "medium", "shed": "low", "yard": "low"}
    changes, t = run(c, [OK] * 40, t)
    assert [(ch.cameras, ch.to_level) for _, ch in changes] == [(("shed", "yard"), "medium")]
    changes, t = run(c, [OK] * 40, t)
    assert [ch.cameras for _, ch in changes] == [("gate",)]  # the higher priority first back to high


def test_shedding_spares_the_highest_priority_cameras() -> None:
    c = controller(cameras={"gate": 1, "yard": 0}, mode="fixed", level="minimal")
    assert c.shed("yard") and not c.shed("gate")
    same = controller(cameras={"a": 0, "b": 0}, mode="fixed", level="minimal")
    assert not same.shed("a") and not same.shed("b")  # equal priorities: nobody is shed


def test_the_floor_and_ceiling_are_respected() -> None:
    profile = load_profile("jetson-agx-orin")  # default ultra, floor low
    c = QualityController(profile, list(profile.levels), 100.0, "auto", None, 0.0)
    c.set_cameras({"a": 0})
    run(c, [Reading(result_p95_ms=500)] * 100)
    assert c.level.name == "low"
    run(c, [Reading(result_p95_ms=10)] * 3000, 100)
    assert c.level.name == "ultra"


def test_fixed_mode_holds_the_level_whatever_the_signals() -> None:
    c = controller(mode="fixed", level="low")
    changes, _ = run(c, [HOT] * 30 + [OK] * 100)
    assert changes == [] and c.level.name == "low" and c.status()["mode"] == "fixed"
    change = c.configure("auto", None, SLA, 200.0)
    assert change is None and c.mode == "auto"
    changes, _ = run(c, [OK] * 40, 200.0)
    assert [ch.to_level for _, ch in changes] == ["medium"]


def test_the_operator_pinning_a_level_is_a_transition_with_its_reason() -> None:
    c = controller()
    change = c.configure("fixed", "minimal", SLA, 1.0)
    assert change is not None and (change.direction, change.signal, change.to_level) == ("set", "operator", "minimal")
    assert c.status()["transitions"][-1]["to"] == "minimal"


def test_temperature_and_cpu_are_read_against_the_profile() -> None:
    c = controller()
    hot = Reading(result_p95_ms=50, temperatures_c={"x86_pkg_temp": 95.0})
    changes, _ = run(c, [hot] * 4)
    assert [ch.signal for _, ch in changes] == ["temperature"]
    assert "x86_pkg_temp at 95 °C ≥ trip 90 °C" in changes[0][1].reason
    warm = Reading(result_p95_ms=50, temperatures_c={"x86_pkg_temp": 85.0})  # below trip, above clear
    busy = Reading(result_p95_ms=50, cpu_percent=97)
    for blocker in (warm, busy):
        c = controller(level="low")
        changes, _ = run(c, [blocker] * 100)
        assert changes == [], blocker


def test_transitions_are_a_bounded_history() -> None:
    c = controller(mode="fixed", level="high")
    for i in range(200):
        c.configure("fixed", ["low", "high"][i % 2], SLA, float(i))
    assert len(c.status()["transitions"]) == 50


# -- profiles ------------------------------------------------------------------------------
def test_every_preset_loads_with_the_shipped_ladder() -> None:
    names = [lv.name for lv in shipped_levels()]
    assert names == ["ultra", "high", "medium", "low", "minimal"]
    for name in PRESETS:
        profile = load_profile(name)
        assert profile.name == name and profile.level_names == names
        assert profile.index(profile.ceiling) <= profile.index(profile.default_level) <= profile.index(
            profile.floor_level)
    assert load_profile("cpu").sla_ms == 250 and load_profile("x86-gpu").sla_ms == 100


def test_auto_picks_the_preset_from_the_hardware() -> None:
    assert auto_preset("NVIDIA Jetson Orin Nano Developer Kit", True)[0] == "jetson-orin-nano"
    assert auto_preset("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", True)[0] == "jetson-orin-nx"
    assert auto_preset("Jetson AGX Orin", True)[0] == "jetson-agx-orin"
    assert auto_preset("NVIDIA Jetson Xavier NX Developer Kit", True)[0] == "jetson-xavier-nx"
    assert auto_preset(None, True)[0] == "x86-gpu"
    assert auto_preset("Raspberry Pi 5", False)[0] == "cpu"


def test_an_invalid_profile_is_an_error_with_key_paths(tmp_path: Path) -> None:
    bad = {"name": "mine", "default_level": "high", "floor_level": "nope", "sla_ms": -1,
           "levels": [{"name": "high", "fps_scale": 2}], "thermal": {"trip_c": 70, "clear_c": 80}}
    with pytest.raises(ProfileError) as err:
        parse_profile(bad, "mine.yaml")
    paths = {p for p, _ in err.value.errors}
    assert {"sla_ms", "levels[0].fps_scale", "thermal"} <= paths
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as cfg_err:
        validate_config({"quality": {"profile": str(path)}})
    assert cfg_err.value.errors[0][0] == "quality.profile" and "levels[0].fps_scale" in cfg_err.value.errors[0][1]


def test_a_users_profile_file_with_its_own_ladder(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"name": "site", "default_level": "day", "floor_level": "night",
                                    "levels": [{"name": "day"}, {"name": "night", "fps_scale": 0.2}],
                                    "control": {"up_after_s": 10}}))
    config = validate_config({"quality": {"profile": str(path), "mode": "fixed", "level": "night"}})
    assert config.quality.level == "night"
    with pytest.raises(ConfigError) as err:
        validate_config({"quality": {"profile": str(path), "level": "high"}})
    assert err.value.errors[0][0] == "quality.level"


# -- the SLA monitor -------------------------------------------------------------------------
def monitor_run(monitor, values_per_tick: list[float], start: float = 0.0) -> tuple[list[dict], float]:
    """One tick per second; each tick's window holds 100 samples of which the given share is over the
    infer budget (200 ms)."""
    events, t = [], start
    for share in values_per_tick:
        t += 1.0
        over = round(share * 100)
        samples = np.array([500.0] * over + [10.0] * (100 - over))
        events += monitor.update({"infer": samples, "pre": np.full(100, 1.0)}, t)
    return events, t


def test_sla_alert_raises_on_a_sustained_violation_and_clears_with_hysteresis() -> None:
    from agent.pipeline.sla import SlaMonitor

    m = SlaMonitor(load_profile("cpu").budgets)  # raise > 10 % for 10 s, clear < 2 % for 30 s
    events, t = monitor_run(m, [0.5] * 9 + [0.0] + [0.5] * 9)  # bursts shorter than the hold time
    assert events == []
    events, t = monitor_run(m, [0.5] * 11, t)
    assert [(e["type"], e["stage"]) for e in events] == [("raised", "infer")]
    assert "infer: 50% of samples over the 200 ms budget for 10 s" in events[0]["reason"]
    assert m.active() and m.status()["stages"]["infer"]["alert"] and not m.status()["stages"]["pre"]["alert"]
    events, t = monitor_run(m, [0.05] * 60, t)  # under the raise rate but not under the clear rate
    assert events == [] and m.active()
    events, t = monitor_run(m, [0.0] * 31, t)
    assert [e["type"] for e in events] == ["cleared"] and not m.active()
    assert m.status()["raised_total"] == 1
    few = m.update({"infer": np.full(5, 500.0)}, t + 1)  # too few samples say nothing
    assert few == [] and m.status()["stages"]["infer"]["violation_rate"] is None


# -- model variants --------------------------------------------------------------------------
def test_a_level_whose_model_variants_are_all_missing_is_skipped_and_the_others_pick_theirs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from agent.pipeline.quality_loop import QualityLoop, model_for

    profile = tmp_path / "variants.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "variants", "default_level": "full", "floor_level": "tiny",
        "levels": [{"name": "full"}, {"name": "quant", "model": ["int8", "base"]},
                   {"name": "tiny", "model": ["small"], "input_scale": 0.5}],
    }))
    int8 = tmp_path / "m-int8.onnx"
    int8.write_bytes(b"not needed to exist as a model here")
    config = validate_config({"quality": {"profile": str(profile),
                                          "models": {"int8": str(int8), "small": str(tmp_path / "absent.onnx")}}})
    loop = QualityLoop(config, host=None, dynamic_size=lambda: None)  # type: ignore[arg-type]
    assert [lv.name for lv in loop.controller.levels] == ["full", "quant"]
    assert "tiny" in loop.skipped and "tiny" in caplog.text
    assert loop.controller.floor == 1  # the floor's place is taken by the next available level above
    quant = loop.controller.levels[1]
    assert model_for(quant, config, None) == ("int8", config.model.model_copy(update={"path": str(int8)}))
    scaled = shipped_levels()[-1]  # minimal: input × 0.5, base as the last resort
    name, model = model_for(scaled, validate_config({}), (640, 640))
    assert name == "base" and model.input_size == (320, 320)
