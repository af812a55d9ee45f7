"""Auto-planning a training run from the data, this machine and a time budget.

`rules.make_plan` (pure: fingerprint + throughput model + budget + user overrides -> `Plan`),
`throughput` (candidates, measured/simulated seconds per step), `plan` (the `Plan` value, its table
and how it is applied to a TrainConfig), `auto` (fingerprint -> timing candidates -> plan, for the CLI).
"""

from unetkit.planning.plan import Choice, Plan, apply_plan, format_plan
from unetkit.planning.rules import make_plan
from unetkit.planning.throughput import Candidate, simulated_throughput

__all__ = ["Candidate", "Choice", "Plan", "apply_plan", "format_plan", "make_plan", "simulated_throughput"]
