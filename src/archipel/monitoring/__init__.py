"""Monitoring: drift statistics between a model's training data and the rows it serves (:mod:`.drift`)."""
