"""Hydra instantiates launchers only from the ``hydra_plugins`` namespace: cai/launch.py's, registered here."""
