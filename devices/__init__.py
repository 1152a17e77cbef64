"""Device-side publishers: simulated sensor fleets and the MQTT publisher that sends them.

``devices.simulator`` needs numpy and the wire contract only; ``devices.publisher``
adds paho (through ``runtime.common.mqtt``).
"""
