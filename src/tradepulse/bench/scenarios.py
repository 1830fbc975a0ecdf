"""Load shapes of `tradepulse bench`, as phases of constant offered rate.

A scenario is a list of phases (name, seconds, events/s). The simulator's own profiles shape
intraday activity for demos; the benchmark needs exact, known rates per phase so that a latency
figure can be quoted "at N events/s", hence the flat profile with the rate set per phase.

`max` is different: a ladder of rates, each step its own fresh run (a step that fell behind
must not hand its backlog to the next), stopping at the first step whose lag did not stay bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = ("market-open", "sustained", "burst", "max")
DEFAULT_RATE = 15_000.0  # the rate issue 8's latency targets are quoted at
# --quick is a smoke check of the harness: its default rate is one the pipeline absorbs today
# (burst included), so a quick run ends exact and in time; pass --rate for anything else.
QUICK_RATE = 5_000.0
BURST_MULT = 3.0
BACKENDS = ("embedded", "cluster")
# The cluster's quick run: a rate its local DynamoDB (sized on moto, the slower) absorbs
# with the 3x burst, so the smoke run drains and ends exact; the whole command, engines and
# peers included, stays under two minutes.
CLUSTER_QUICK_RATE = 100.0


@dataclass(frozen=True, slots=True)
class Phase:
    name: str  # sustained | burst | recovery | step-<rate>
    seconds: float
    rate: float


@dataclass(frozen=True, slots=True)
class Plan:
    scenario: str
    base_rate: float
    phases: tuple[Phase, ...] = ()  # one run through all phases (not used by `max`)
    steps: tuple[Phase, ...] = ()  # `max` only: one fresh run per step

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases) + sum(p.seconds for p in self.steps)


def plan(
    scenario: str,
    *,
    rate: float | None,
    duration_s: float | None,
    quick: bool,
    burst_s: float | None = None,
    recovery_s: float | None = None,
    backend: str = "embedded",
) -> Plan:
    """The phases for `scenario`. `duration_s` sets the sustained part (or each max step);
    `quick` shrinks every default so the whole command stays under two minutes (the cluster's
    further: its processes take seconds to start and stop)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)} (got {scenario!r})")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    cluster_quick = quick and backend == "cluster"
    quick_rate = CLUSTER_QUICK_RATE if backend == "cluster" else QUICK_RATE
    base = float(rate) if rate is not None else (quick_rate if quick else DEFAULT_RATE)
    if base <= 0:
        raise ValueError(f"rate must be positive (got {base})")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration must be positive (got {duration_s})")
    short = 4.0 if cluster_quick else 10.0
    burst_s = burst_s if burst_s is not None else (short if quick else 30.0)
    # After a burst the offered rate returns to normal: how fast the backlog drains is part of
    # the target ("lag drains within 60 s"), so the run continues long enough to see it.
    recovery_s = recovery_s if recovery_s is not None else (short if quick else 60.0)
    if scenario == "market-open":
        # Quick: 30 s, which leaves room in the two minutes for the retrain on/off runs (the
        # cluster's 12 s: for its engines, peers and process start-up instead).
        quick_s = 12.0 if cluster_quick else 30.0
        sustained = duration_s if duration_s is not None else (quick_s if quick else 600.0)
        phases = (
            Phase("sustained", sustained, base),
            Phase("burst", burst_s, base * BURST_MULT),
            Phase("recovery", recovery_s, base),
        )
        return Plan(scenario, base, phases=phases)
    if scenario == "sustained":
        quick_s = 20.0 if cluster_quick else 60.0
        sustained = duration_s if duration_s is not None else (quick_s if quick else 600.0)
        return Plan(scenario, base, phases=(Phase("sustained", sustained, base),))
    if scenario == "burst":
        lead = short if quick else 30.0
        phases = (
            Phase("sustained", lead, base),
            Phase("burst", duration_s if duration_s is not None else burst_s, base * BURST_MULT),
            Phase("recovery", recovery_s, base),
        )
        return Plan(scenario, base, phases=phases)
    step_s = duration_s if duration_s is not None else (8.0 if quick else 30.0)
    rates = ladder(rate, quick=quick, backend=backend)
    return Plan(scenario, base, steps=tuple(Phase(f"step-{r:g}", step_s, r) for r in rates))


def ladder(start: float | None, *, quick: bool, backend: str = "embedded") -> list[float]:
    """Rates to try, ascending; bounded in count so `max` is bounded in time. The cluster's
    steps each start and stop its processes, so it takes fewer, doubling from a low rate."""
    if backend == "cluster":
        first = start if start is not None else CLUSTER_QUICK_RATE
        return [first * 2**i for i in range(3 if quick else 6)]
    if quick:
        rates = [10_000.0, 25_000.0, 50_000.0, 100_000.0]
    else:
        rates = [
            10_000.0,
            20_000.0,
            40_000.0,
            60_000.0,
            80_000.0,
            100_000.0,
            130_000.0,
            160_000.0,
            200_000.0,
        ]
    if start is not None:
        rates = [start * m for m in (1, 2, 4, 6, 8, 10, 13, 16, 20)][: len(rates)]
    return rates
