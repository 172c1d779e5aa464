"""The operator CLI's parts (``runlab``): config, MQTT link, InfluxQL reads, push/wait, fleet views, plots.

``collector/operator.py`` is only the entry point; each command lives in its own small module here.
"""
