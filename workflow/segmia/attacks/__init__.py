"""Membership inference: model outputs and loss maps, attack features, attack models, scoring."""
