"""Training on the embedded synthetic world: the CLIP teacher, the RPN, checkpoints and metrics."""
