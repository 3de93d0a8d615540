"""Control: commands and desired config from the fleet, checked, applied, answered.

Public face: `command_channel.CommandChannel` (the MQTT side), `commands.Commands` (the command
catalogue), `config_service.ConfigService` (validate, apply, persist, report). They act on the
device only through `device_api.DeviceControl`, which the runtime provides; control never imports it.
"""
