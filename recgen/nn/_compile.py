"""Letting torch.compile trace recgen's recurrent modules.

Dynamo refuses to trace any instance of torch.nn.RNN / GRU / LSTM (their cuDNN forward is not
traceable) unless torch._dynamo.config.allow_rnn is True. recgen's modules subclass those
classes to stay drop-in (isinstance, flatten_parameters), and their forward is traceable (the
kernels are torch.library ops), so recgen sets the flag when one of its recurrent modules is
created, converted or unpickled. Side effect, documented in the README: plain torch.nn RNNs
compiled in the same process are then traced too, instead of breaking the graph.
"""

from __future__ import annotations

import logging

log = logging.getLogger("recgen")


def allow_dynamo_rnn() -> None:
    import torch._dynamo.config as dynamo_config  # imported here: about a second, once

    if not dynamo_config.allow_rnn:
        dynamo_config.allow_rnn = True
        log.info("recgen: set torch._dynamo.config.allow_rnn = True so torch.compile traces "
                 "recgen's RNN/GRU/LSTM modules (subclasses of torch.nn's)")
