import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Tiny models gain nothing from intra-op threads, and one thread keeps the suite fast on a busy machine.
torch.set_num_threads(1)


@pytest.fixture
def real_data():
    """Tests marked ``@pytest.mark.usefixtures("real_data")`` need ../shared/data (see helpers.shared_data)."""
    from helpers import shared_data

    return shared_data()
