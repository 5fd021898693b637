"""The visible loops: meta-training and evaluation, and the builders they use."""
