"""Monthly cost estimate of a silo from its machine and volume sizes.

Every price assumption lives here. Source: Fly.io's public pricing page (fly.io/docs/about/pricing),
as of 2025: a started shared-cpu-1x machine with 256 MB costs $1.94 per 30 days, each further GB of
RAM $5.00 per 30 days, billed per second while started; stopped machines cost only their root-fs
(ignored here); volumes $0.15 per provisioned GB per month, started or not; IPv6 and shared IPv4 are
free. Bandwidth is not estimated (it depends on traffic).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

HOURS_PER_MONTH = 730
SHARED_CPU_MONTH_USD = 1.94  # per shared vCPU, including 256 MB of RAM
EXTRA_RAM_GB_MONTH_USD = 5.00
PERFORMANCE_CPU_MONTH_USD = 31.00  # performance-1x with 2 GB
VOLUME_GB_MONTH_USD = 0.15
# Seed 004's working assumption: a dev environment is active 8 hours a day (240 hours a month).
SEED_ACTIVE_HOURS = 240


def machine_month_usd(guest: Mapping[str, Any]) -> float:
    """Price of one machine started for a whole month."""
    cpus = int(guest.get("cpus") or 1)
    memory_gb = int(guest.get("memory_mb") or 256) / 1024
    if guest.get("cpu_kind") == "performance":
        included_gb = cpus * 2.0
        return cpus * PERFORMANCE_CPU_MONTH_USD + max(memory_gb - included_gb, 0) * EXTRA_RAM_GB_MONTH_USD
    return cpus * SHARED_CPU_MONTH_USD + max(memory_gb - cpus * 0.25, 0) * EXTRA_RAM_GB_MONTH_USD


def estimate(guests: Iterable[Mapping[str, Any]], volume_sizes_gb: Iterable[int]) -> dict[str, Any]:
    """Cost per month always-on, at the seed's 240 active hours, and while stopped (volumes only)."""
    compute = sum(machine_month_usd(g) for g in guests)
    storage = sum(volume_sizes_gb) * VOLUME_GB_MONTH_USD
    return {
        "currency": "USD",
        "compute_always_on": round(compute, 2),
        "volumes": round(storage, 2),
        "total_always_on": round(compute + storage, 2),
        f"total_{SEED_ACTIVE_HOURS}h_active": round(compute * SEED_ACTIVE_HOURS / HOURS_PER_MONTH + storage, 2),
        "total_stopped": round(storage, 2),
        "assumptions": "Fly.io list prices (components/domain/costs.py); started time billed per second; "
        "bandwidth not included",
    }
