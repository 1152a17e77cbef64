"""Infrastructure shared by the edge, the bridge and the device publishers.

Nothing here imports numpy, an interpreter or influxdb-client.
"""
