"""Runs: launch planned steps at their sites, supervise them, checkpoint and recover them elsewhere.

- :mod:`~archipel.executor.states` the run and step life cycle;
- :mod:`~archipel.executor.checkpoint` the checkpoint format (arrays and JSON, never pickle);
- :mod:`~archipel.executor.channel` the files a worker writes for the control plane (events, heartbeat);
- :mod:`~archipel.executor.context` the job SDK user code calls (``archipel.job.context()``);
- :mod:`~archipel.executor.reconciler` the control loop that moves runs through their life cycle.
"""
