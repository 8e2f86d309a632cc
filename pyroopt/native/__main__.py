"""``python -m pyroopt.native``: build the native library now (``make install`` does).

Exits with status 1 and the compiler's message when it cannot be built.
"""

import sys

from pyroopt import native

if __name__ == "__main__":
    try:
        path = native.build()
    except (native.NativeBuildError, OSError) as error:  # OSError: cache not writable
        sys.exit(f"pyroopt.native: {error}")
    print(f"pyroopt native kernels: {path}")
