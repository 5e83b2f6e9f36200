"""OmegaConf resolvers used by the configs; imported by every entry point before Hydra composes."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

# paths.root_dir defaults to the checkout that holds this package, whatever the working directory.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


def register_resolvers() -> None:
    """``${csv:${dataset.categories}}`` turns a list into Hydra sweep syntax ("a,b,c");
    ``${run_hash:}`` is the short hash of the run's identity config that names its run dir
    (:func:`cai.runid.run_hash`)."""
    from cai.runid import run_hash

    if not OmegaConf.has_resolver("csv"):
        OmegaConf.register_new_resolver("csv", lambda items: ",".join(str(i) for i in items))
    if not OmegaConf.has_resolver("run_hash"):
        OmegaConf.register_new_resolver("run_hash", run_hash)


register_resolvers()
