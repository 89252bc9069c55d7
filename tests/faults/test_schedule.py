"""A seed and a window fix the fault schedule and the client script (no I/O here)."""

from __future__ import annotations

import pytest

from tests.faults.schedule import KINDS, LEASE_SECONDS, fault_schedule
from tests.faults.script import BURST, BURST_PROJECT, POLICIES, STYLES, client_script


@pytest.mark.parametrize("seed", [1, 2, 3, 99])
def test_a_schedule_has_every_fault_in_time_order(seed: int) -> None:
    schedule = fault_schedule(seed, 20.0)
    assert {fault.kind for fault in schedule} >= set(KINDS)
    long = [fault for fault in schedule if fault.kind == "long_outage"]
    assert len(long) == 1 and long[0].seconds > LEASE_SECONDS and long[0] != schedule[0]
    assert all(f.seconds > LEASE_SECONDS for f in schedule if f.kind == "stall")
    starts = [fault.at for fault in schedule]
    assert starts == sorted(starts) and starts[0] > 0 and starts[-1] < 20.0
    shares = [f.amount for f in schedule if f.kind in ("cut", "lose_replies", "delay")]
    assert all(0 < share <= 1.0 for share in shares)


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    assert fault_schedule(7, 20.0) == fault_schedule(7, 20.0)
    assert client_script(7, 20.0) == client_script(7, 20.0)
    assert fault_schedule(7, 20.0) != fault_schedule(8, 20.0)
    assert client_script(7, 20.0) != client_script(8, 20.0)


def test_a_script_has_every_style_and_unique_keys() -> None:
    plans = client_script(5, 20.0)
    assert {plan.style for plan in plans} == {*STYLES, "burst"}
    assert {plan.on_running for plan in plans} == set(POLICIES)
    assert len({plan.key for plan in plans}) == len(plans)
    burst = [plan for plan in plans if plan.style == "burst"]
    assert len(burst) == BURST and {plan.project for plan in burst} == {BURST_PROJECT}
    # No interrupt in the burst's projects: nothing there is cancelled but by its own client.
    assert all(plan.project != BURST_PROJECT for plan in plans if plan.on_running == "interrupt")
    assert all(plan.reads for plan in plans if plan.style in ("hop", "cancel", "abandon"))
