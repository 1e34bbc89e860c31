"""Compliance accounting: pure functions from verified readings and effective-dated methodology
parameters to the figures a plant reports (HJ 75 / HJ 212 data processing, national ETS CO2)."""
