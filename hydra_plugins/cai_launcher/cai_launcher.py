"""The launchers of conf/hydra/launcher/{local,slurm}.yaml, as Hydra plugins (the logic is in cai/launch.py).

Hydra imports this module whenever it scans for plugins, so a missing ``[cluster]`` extra must not break
it: then the two launchers only say how to install it.
"""

from __future__ import annotations

from typing import Any

from cai.errors import ConfigError

try:
    from cai.launch import JoblibLauncher as _JoblibLauncher
    from cai.launch import SlurmLauncher as _SlurmLauncher
except ImportError as err:  # hydra-joblib-launcher / hydra-submitit-launcher not installed
    from hydra.plugins.launcher import Launcher

    _MISSING = str(err)

    class _NotInstalled(Launcher):
        def __init__(self, **_: Any) -> None:
            raise ConfigError(f"hydra/launcher=local and hydra/launcher=slurm need the Hydra launcher plugins "
                              f"({_MISSING}).",
                              fix='pip install -e ".[cluster]" (make install does), or use the default launcher.')

        def setup(self, **_: Any) -> None:  # pragma: no cover - __init__ raises
            raise NotImplementedError

        def launch(self, *_: Any, **__: Any) -> Any:  # pragma: no cover - __init__ raises
            raise NotImplementedError

    class JoblibLauncher(_NotInstalled):
        """hydra/launcher=local without hydra-joblib-launcher installed."""

    class SlurmLauncher(_NotInstalled):
        """hydra/launcher=slurm without hydra-submitit-launcher installed."""

else:

    class JoblibLauncher(_JoblibLauncher):
        __doc__ = _JoblibLauncher.__doc__

    class SlurmLauncher(_SlurmLauncher):
        __doc__ = _SlurmLauncher.__doc__
