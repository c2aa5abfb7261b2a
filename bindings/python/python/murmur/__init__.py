"""Murmur: a peer-to-peer replicated key-value map (automerge merges, SQLite persistence,
iroh networking, Bully leader election).

Everything here is re-exported from the uniffi-generated module ``murmur.murmur.murmur``
(maturin places the generated module and the bundled Rust library in ``murmur/murmur/``);
see ``help(murmur.Swarm)``.
"""

from .murmur.murmur import *  # noqa: F401,F403
from .murmur.murmur import __all__  # noqa: F401
