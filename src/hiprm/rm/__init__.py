"""The reward model: the one step formatter (template), backbone loading, training as a 2-class
sequence classifier, scoring (reward = softmax P(positive)) and evaluation without a policy.
"""
