"""The planner beside the stages: each selected conv's candidates (keep it, or a variant) with
exact counts and measured latencies, an exact multiple-choice knapsack over them, and plan
files. See docs/plan.md."""
