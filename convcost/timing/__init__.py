"""Stage 4, timing: devices and numerics, the measurement harness, what gets measured in a
report, and roofline peaks."""
