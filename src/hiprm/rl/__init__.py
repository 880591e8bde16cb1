"""Reward models inside reinforcement learning: step rewards for TRL's `GRPOTrainer`
(`hiprm.rl.rewards`) and `hiprm rl` (`hiprm.rl.train`). TRL is imported only here (`hiprm[rl]`)."""
