"""Study configuration, run plans, the results store, executors and analysis."""
