"""Trainers (FPTT and the BPTT baseline) and the epoch loop with checkpoints and resume."""
