"""Device-side publishers: simulated sensor fleets and the MQTT publisher that sends them.

``edgeloop.devices.simulator`` needs numpy and the wire contract only; ``edgeloop.devices.publisher``
adds paho (through ``edgeloop.mqtt``).
"""
