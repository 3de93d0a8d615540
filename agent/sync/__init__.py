"""Sync: the MQTT link and what crosses it towards the broker.

Public face: `mqtt_link.MqttLink` (connect, birth and will, sessions), `sync.Syncer` (drains the
outbox, deletes rows on PUBACK), `telemetry.Telemetry` (periodic health readings into the store).
"""
