import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

# Tiny models gain nothing from intra-op threads, and one thread keeps the suite fast on a busy machine.
torch.set_num_threads(1)
