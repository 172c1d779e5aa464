"""The engine's phases beyond cold start, footprint, size and load: one module each, ``run(runner, runtimes)``.

Each module measures one thing the field report measured (redeploy, stack boot, inter-service latency,
platform overhead and density, workload benchmark) and stores it in the runner's results; ``pi`` holds the
Raspberry Pi care every phase shares (cool-down, throttling flags).
"""
