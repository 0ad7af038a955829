"""Every figure: pure plotting functions (plots.py for one run, side_by_side.py for runs beside each other,
rate_distortion.py for the rate-distortion plane) and what gathers their tensors (run_figures.py,
comparison_figures.py)."""
