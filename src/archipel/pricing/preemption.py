"""How often spot capacity is taken back, and what that costs a job in expected rework.

The rates are *estimates*, per provider, in preemptions per hour; a site overrides them with
``spot_preemption_per_hour``. Sources: Google documented a 5-15 % per day preemption rate for preemptible VMs
(about 0.004/h at 10 %/day); AWS's Spot Instance Advisor reports interruption-frequency bands per month, most
instance types below 10 %/month (about 0.00014/h); Azure publishes no figure (0.002/h assumed). Real rates vary by
instance type, zone and hour: treat the resulting risk term as an order of magnitude.
"""

from __future__ import annotations

import math

__all__ = ["PREEMPTION_PER_HOUR", "RESTART_HOURS", "expected_hours"]

PREEMPTION_PER_HOUR: dict[str, float] = {"aws": 0.00014, "gcp": 0.0043, "azure": 0.002}
RESTART_HOURS = 5 / 60
"""Getting new capacity, restarting and reloading state after each preemption."""


def expected_hours(work_hours: float, rate_per_hour: float, checkpoint_hours: float | None) -> float:
    """Expected wall-clock hours to finish ``work_hours`` of work under preemptions at ``rate_per_hour``.

    Work is lost back to the last checkpoint (or the start). With segments of length ``c`` each restarted until
    it completes, a segment takes ``(e^(rate*c) - 1) / rate`` hours in expectation, plus ``RESTART_HOURS`` per
    preemption; without checkpoints the whole job is one segment.
    """
    if work_hours <= 0:
        return 0.0
    if rate_per_hour <= 0:
        return work_hours
    segment = min(checkpoint_hours, work_hours) if checkpoint_hours else work_hours
    segments = work_hours / segment
    per_segment = math.expm1(rate_per_hour * segment) / rate_per_hour
    preemptions = segments * math.expm1(rate_per_hour * segment)
    return segments * per_segment + preemptions * RESTART_HOURS
