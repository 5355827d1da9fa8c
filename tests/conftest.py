"""Suite-wide settings: one torch thread, so results and run times don't depend on the core count.

On a 2-core machine torch's default intra-op threads fight the test's own processes (Ray,
Flower SuperNodes); one thread is both faster here and the same on every machine.
"""

import torch

torch.set_num_threads(1)
