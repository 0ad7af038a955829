"""The training stages of a run: objects built from configs, the loop, checkpoints, the run folder's
files, stop signals, launchers and trackers."""
