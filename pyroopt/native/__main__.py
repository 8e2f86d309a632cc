"""``python -m pyroopt.native``: build the native library now (``make install`` does),
check whether its loops may take float32 square roots in line here
(:mod:`pyroopt.native._newton_root`), and check every loop against torch's own
optimizer (:mod:`pyroopt.native.selfcheck`), so that none of this waits for a first
step. It then prints, per rule and dtype, which implementation runs here and why.

Exits with status 1 and the compiler's message when it cannot be built.
"""

import sys

from pyroopt import native
from pyroopt.native import _newton_root, selfcheck

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
    lines = selfcheck.report()  # checks every loop whose verdict is not kept yet
    seconds = selfcheck.CHECK_SECONDS.values()
    if seconds:
        print(
            f"self-check against torch: {len(seconds)} loops checked in "
            f"{1000 * sum(seconds):.0f} ms ({1000 * max(seconds):.0f} ms the longest)"
        )
    elif lib is not None:
        print("self-check against torch: verdicts kept from an earlier check")
    print("\n".join(lines))
