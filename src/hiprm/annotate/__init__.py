"""MCTS auto-annotation: reasoning trees grown by a policy, MC-scores from correct leaves, and
hierarchical node compression (HNC) as cheap augmentation.
"""
