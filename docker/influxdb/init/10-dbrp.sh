#!/bin/sh
# Runs once, after the influxdb:2 image's automated setup (DOCKER_INFLUXDB_INIT_MODE=setup), with the
# influx CLI already authenticated as the admin. Maps database "edgeloop" / retention policy "autogen"
# onto the initial bucket, so InfluxQL clients -- Grafana's dashboards -- can query the bucket through
# the v1-compatible /query endpoint (with "Authorization: Token ..." in the request).
set -eu
influx v1 dbrp create \
  --org "${DOCKER_INFLUXDB_INIT_ORG}" \
  --bucket-id "${DOCKER_INFLUXDB_INIT_BUCKET_ID}" \
  --db "${EDGELOOP_INFLUX_DB:-edgeloop}" \
  --rp autogen \
  --default
