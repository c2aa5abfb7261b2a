"""Murmur: a peer-to-peer replicated key-value map (automerge merges, SQLite persistence,
iroh networking, Bully leader election).

Everything here is re-exported from the uniffi-generated module ``murmur.murmur.murmur``
(maturin places the generated module and the bundled Rust library in ``murmur/murmur/``);
see ``help(murmur.Swarm)``.

At interpreter exit (``atexit``, while the interpreter is still whole) the package calls
``prepare_exit()``: every subscription still live is cancelled and its listener released, and
every swarm still open is shut down (gracefully: peers see it leave, the data directory is
released). Calls on those swarms afterwards raise ``MurmurError.Closed``. So a script may end
with live subscriptions, without ``shutdown()``, or while another thread writes, and the
process still exits with its own exit code.
"""

import atexit as _atexit

from .murmur.murmur import *  # noqa: F401,F403
from .murmur.murmur import __all__  # noqa: F401
from .murmur.murmur import prepare_exit as _prepare_exit

_atexit.register(_prepare_exit)
