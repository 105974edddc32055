"""Drop-ins for the frameworks that own the training loop, built on :class:`tracked_train.Run`.

- :mod:`tracked_train.integrations.hf`: a ``transformers.TrainerCallback`` for the Hugging Face ``Trainer``;
- :mod:`tracked_train.integrations.lightning`: a ``Logger`` for the PyTorch Lightning ``Trainer``.

Each module imports its framework; this package imports nothing, so ``import tracked_train`` stays instant.
See docs/your-loop.md.
"""
