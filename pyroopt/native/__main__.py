"""``python -m pyroopt.native``: build the native library now (``make install`` does),
and check whether its loops may take float32 square roots in line here
(:mod:`pyroopt.native._newton_root`), so that neither waits for a first step.

Exits with status 1 and the compiler's message when it cannot be built.
"""

import sys

from pyroopt import native
from pyroopt.native import _newton_root

if __name__ == "__main__":
    try:
        path = native.build()
    except (native.NativeBuildError, OSError) as error:  # OSError: cache not writable
        sys.exit(f"pyroopt.native: {error}")
    print(f"pyroopt native kernels: {path}")
    lib = native.library()
    if lib is None:  # built, but not for this process (PYROOPT_NATIVE=0, ...)
        print(f"not loaded: {native.unavailable_reason()}")
    else:
        reason = _newton_root.reason_off(lib)
        print(f"in-line float32 square root: {'on' if reason is None else 'off, ' + reason}")
