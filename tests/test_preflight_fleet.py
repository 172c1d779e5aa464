"""A fleet run does what a local run does with variants the pre-flight refuses: runs the others, and says so."""

from __future__ import annotations

from tests.test_fleet_agent import HELLO, WORKLOADS, Fleet, _workloads_built, fleet

__all__ = ["_workloads_built", "fleet"]


def two_variants(f: Fleet, marker: str, good: bool = True) -> str:
    ghost = f"{WORKLOADS}/runlab-no-such-binary"  # inside the policy's commands, but not there
    native = (f'["/bin/sh", "-c", "echo start >> {f.marker(marker)}; exec {HELLO} --port {{port}}"]' if good
              else f'["{ghost}", "--port", "{{port}}"]')
    return f"""\
name: fleet-preflight
repeat: 2
warmup: 0
phases: [cold_start]
ready:
  http: "http://127.0.0.1:{{port}}/"
  timeout: 30s
variants:
  - name: ghost
    runtime: process
    command: ["{ghost}", "--port", "{{port}}"]
  - name: native
    runtime: process
    env: {{RUNLAB_TEST_TAG: "{f.tag}"}}
    command: {native}
"""


def test_fleet_run_skips_a_variant_that_cannot_run_and_its_events_say_why(fleet: Fleet) -> None:
    fleet.agent().start()
    run, _topic, _payload = fleet.push(two_variants(fleet, "some"))
    done = fleet.watch.wait_status(run, "finished")
    assert done.reason.startswith(f"skipped variant ghost: {WORKLOADS}/runlab-no-such-binary is missing"), done
    assert fleet.lines("some") == 2  # native ran its two cold starts
    phases = [e.phase for e in fleet.watch.events(run) if e.status == "phase"]
    assert phases[:2] == ["pre-flight", "cold starts"]
    skipped = [s for s in fleet.watch.samples("run_sample") if s.tags["run"] == run and s.tags["figure"] == "skipped"]
    assert [s.tags["variant"] for s in skipped] == ["ghost"]


def test_fleet_run_where_nothing_can_run_fails_naming_every_reason(fleet: Fleet) -> None:
    fleet.agent().start()
    run, _topic, _payload = fleet.push(two_variants(fleet, "none", good=False))
    failed = fleet.watch.wait_status(run, "failed")
    assert "skipped variant ghost:" in failed.reason and "skipped variant native:" in failed.reason
    assert not [e for e in fleet.watch.events(run) if e.status == "phase" and e.phase == "cold starts"]
