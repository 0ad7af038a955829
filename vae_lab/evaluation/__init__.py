"""What a run measures on the test split after training: the suite, the metrics, batched inference, the
digit classifier that judges decoded samples."""
