"""runlab-collector and the operator CLI: MQTT → validated batches → InfluxDB, and reports from it."""
