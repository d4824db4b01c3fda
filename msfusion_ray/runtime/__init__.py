"""Ray: the embedded cluster, the driver actor, host actors, the round engine and checkpoints."""
