"""The training machinery every task shares: the loop (:mod:`.loop`), learning-rate schedules, checkpoints,
torchrun support, bfloat16 autocast and sliding-window inference."""
