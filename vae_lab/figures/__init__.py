"""Every figure: pure plotting functions (plots.py) and the figures each run gets (run_figures.py)."""
