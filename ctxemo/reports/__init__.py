"""Stage 7, reports: tables, plots, the run-folder layout, the ablation comparison with its caller-level bootstrap, and the exploration figures."""
