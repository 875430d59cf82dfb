"""vla-autoprune's Hydra sweeper (Hydra discovers sweepers in the ``hydra_plugins`` namespace)."""
