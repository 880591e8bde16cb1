"""Self-training of the policy: selecting high MC-score trajectories and SFT with an added
KL term against a frozen reference model.
"""
