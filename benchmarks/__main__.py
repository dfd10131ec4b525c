"""`python -m benchmarks`: every phase (benchmarks/all.py)."""
from launch import common as launch_common

from benchmarks import all as all_phases

launch_common.run(all_phases.main)
