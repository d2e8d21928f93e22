"""How many CPU threads segmorph's torch work uses, and how idle OpenMP workers wait.

Two segmorph processes on one machine must share it rather than fight over it. Two settings decide that:

* **The OpenMP wait policy.** By default an OpenMP worker that runs out of work spins on its core for a
  while before it sleeps, so that the next parallel region starts at once. Alone, that saves a little;
  beside another busy process, the spinning workers burn the time slices the other process needs, and both
  slow down many times over; an idle worker that sleeps at once instead makes every parallel region wait for
  a wake-up, which on a virtual machine costs a single process much of its speed. :func:`prefer_passive_waiting`
  takes the middle: idle workers spin briefly (``GOMP_SPINCOUNT`` :data:`SPIN_COUNT`, a few microseconds,
  enough to bridge back-to-back parallel regions) and then sleep (``OMP_WAIT_POLICY=PASSIVE``), unless the user
  set either variable. The OpenMP runtime reads them once, when torch loads it, so ``segmorph/__init__.py``
  calls it before anything imports torch: the command line and the Python API (``import segmorph``) both get
  it. ``benchmarks/overload.py`` measures the policies against each other.
* **The number of threads.** :func:`default_threads` is the number of physical cores this process may run on
  (its CPU affinity and its cgroup CPU quota count too), never the machine's logical CPUs; ``--threads N``
  (:func:`set_threads`) chooses another number.

Example:
    >>> from segmorph.threads import set_threads
    >>> set_threads(2)  # torch intra-op (and, where still allowed, inter-op) threads
    2
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
SPIN_COUNT_VARIABLE = "GOMP_SPINCOUNT"
# Spins of an idle worker before it sleeps. GNU OpenMP's own default is 300,000 (a full time slice's worth
# when two processes share the cores); 0 (passive) makes every parallel region wait for a wake-up. A few
# thousand keeps a lone process close to its spinning speed and two processes close to a fair share
# (benchmarks/RESULTS.md, "Two processes at once").
SPIN_COUNT = 3000
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def prefer_passive_waiting() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` and ``GOMP_SPINCOUNT`` (:data:`SPIN_COUNT`) in this process's environment
    unless the user set either.

    ``GOMP_SPINCOUNT`` is GNU OpenMP's (the runtime of PyPI's torch on Linux); an explicit spin count takes
    precedence over the passive policy's zero there. Takes effect only when it runs before the OpenMP runtime
    starts (before torch is imported); child processes inherit it in any case.
    """
    if WAIT_POLICY_VARIABLE in os.environ or SPIN_COUNT_VARIABLE in os.environ:
        return
    os.environ[WAIT_POLICY_VARIABLE] = "PASSIVE"
    os.environ[SPIN_COUNT_VARIABLE] = str(SPIN_COUNT)


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask; all of them where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int]) -> int:
    """How many distinct physical cores the logical CPUs ``cpus`` sit on (hyper-threads share one core).

    Reads the Linux topology in ``/sys``; elsewhere (or when it cannot be read) every logical CPU counts as one.
    """
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
            )
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def cpu_quota() -> int | None:
    """The cgroup (v2) CPU quota in whole CPUs, rounded up; None when there is none or it cannot be read."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """Threads for torch's CPU work when none are asked for: the physical cores this process may use.

    That is the number of physical cores under the process's CPU affinity, capped by its cgroup CPU quota;
    at least 1.
    """
    cores = physical_cores(usable_cpus())
    quota = cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads``; returns the number set.

    None applies the default policy: :func:`default_threads`, or fewer where torch is set to fewer already
    (a program that calls segmorph and chose fewer threads keeps its choice).

    The inter-op pool is set to the same number too where torch still allows it (only before its first
    parallel work; afterwards it keeps its size). Call this before the work starts.

    Raises:
        ValueError: ``threads`` is less than 1.
    """
    import torch

    count = min(default_threads(), torch.get_num_threads()) if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"threads: expected at least 1, got {threads}")
    torch.set_num_threads(count)
    if torch.get_num_interop_threads() != count:
        with contextlib.suppress(RuntimeError):  # the inter-op pool has started: its size is fixed from then on
            torch.set_num_interop_threads(count)
    return count
