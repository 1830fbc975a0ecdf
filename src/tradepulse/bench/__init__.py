"""`tradepulse bench`: load the real pipeline from the simulator, measure, compare, report.

    doc = run_bench(BenchOptions(scenario="market-open", quick=True, out=Path("/tmp/b")))

See run.py for the order of a run, collect.py for what is measured and how, baseline.py for
the peer that follows the original's design, report.py for the targets and the outputs.
"""

from tradepulse.bench.run import BenchOptions, run_bench

__all__ = ["BenchOptions", "run_bench"]
