"""Stage 5, report: rendering only, one module per command (analyze, compare, check), shared
helpers in common, plots and spec export."""
