"""Scaling-law forms, robust fitting, held-out evaluation, bootstrap and critical data sizes.

numpy and scipy only: nothing here imports torch.
"""
