"""Imported first in the job fork server (enclave.jobs.PRELOAD): keep library chatter out of the
enclave's log before the libraries that make it are imported.

transformers imports torchao whenever it loads a model and torchao is installed (its quantizer
registry); torchao then logs a warning for each optional native kernel this machine cannot load
(CUDA-only builds on CPU), and torch's pytree logs a deprecation for each enum torchao registers.
Neither says anything about the job. Errors still show.
"""

import logging

for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
