"""``synthesizer=none``: no pseudo anomalies, for a detector trained on another dataset's real annotated
anomalies instead (``detector=headclip detector.train_on=auxiliary``, HeadCLIP's zero-shot protocol).

It names such runs (their run dirs and table rows) honestly; asked to synthesize, it stops with a
:class:`~cai.errors.ConfigError` (the pipeline never asks it: cai/detect/auxiliary.py::check_train_on)."""

from __future__ import annotations

import numpy as np

from cai.errors import ConfigError
from cai.synth.base import SynthesisContext, Synthesizer


class NoSynthesizer(Synthesizer):
    """Makes nothing: any use is a configuration error."""

    def _refuse(self) -> ConfigError:
        return ConfigError("synthesizer=none makes no pseudo anomalies.", where="synthesizer=none",
                           fix="Choose a synthesizer (e.g. synthesizer=cai_n), or train on another dataset's "
                               "annotated anomalies: detector=headclip detector.train_on=auxiliary.")

    def prepare(self, context: SynthesisContext) -> None:
        raise self._refuse()

    def __call__(self, image: np.ndarray, foreground: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise self._refuse()
