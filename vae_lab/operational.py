"""The config keys that say how a run ran (where, on how many threads, how fast, how it is logged and
measured), not what it is: the one declaration that compare's labels (vae_lab/labels.py), the trackers'
run names and parameters (vae_lab/training/loggers/), the keys a resume must match
(training/checkpoint.py's resume_key) and Hydra's `exclude_keys` for sweep folder names (conf/config.yaml,
checked against this by tests/test_config.py) follow."""

OPERATIONAL_KEYS = frozenset(
    {
        "trainer.threads",
        "trainer.progress",
        "trainer.figures",
        "trainer.resume",
        "trainer.eval_batch_size",
        "device",
        "data.root",
        "data.download",
        "objective",  # the search's objective: which number a sweep reads, not how a run trains
    }
)
OPERATIONAL_GROUPS = ("hydra", "speed", "evaluation", "logger")  # every key below them


def is_operational(key: str) -> bool:
    """True for a config key (or override key, `group/choice` spelling included) that says where or how
    a run ran."""
    return key in OPERATIONAL_KEYS or key.split("/")[0].split(".")[0] in OPERATIONAL_GROUPS
