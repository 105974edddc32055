"""Everything that talks to MLflow, in one place.

- :mod:`.client`: where the store is, and a client set up once (credentials
  out of the URI, MLflow's own chatter off, retries left to the spool);
- :mod:`.sink`: spooled events -> the server, with what to retry, what to set
  aside and when to stop sending;
- :mod:`.tracker`: the :class:`~tracked_train.trackers.Tracker` behind ``--tracker mlflow``, and ``sync``;
- :mod:`.store`: reading runs and checkpoints back (``resume``, ``generate``, ``runs``, ``compare``).

Inside this package ``import mlflow`` is the MLflow library (absolute imports).
"""
