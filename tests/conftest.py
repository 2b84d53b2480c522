import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Batch.validate's value checks (opt-in on the hot path of a forward pass) run in every test, and in the
# CLI subprocesses tests start. Set before lifelong.batch is imported.
os.environ.setdefault("LIFELONG_VALIDATE", "1")

# Tiny models gain nothing from intra-op threads, and one thread keeps the suite fast on a busy machine.
torch.set_num_threads(1)


@pytest.fixture
def real_data():
    """Tests marked ``@pytest.mark.usefixtures("real_data")`` need ../shared/data (see helpers.shared_data)."""
    from helpers import shared_data

    return shared_data()
