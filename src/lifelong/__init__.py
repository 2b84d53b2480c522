"""lifelong: user-interest modeling for recommender systems.

Behavior sequences in, interest representations out: ranking (CTR) and retrieval models trained and
evaluated under exact, published protocols. See DESIGN.md for the one-way flow
``data -> dataset -> protocols -> batch -> models -> train``.
"""

__version__ = "0.1.0"
