"""`--profile`: a batchrun command under a CPU profiler of every thread."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any


def worker_profile(out: str, *args: str) -> dict[str, Any]:
    """`batchrun ARGS` with a cProfile per thread counting CPU time (time.thread_time), merged
    into OUT: plain `python -m cProfile` sees only the main thread and counts waiting."""
    import cProfile
    import pstats

    from batchrun.cli import main as batchrun_main

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread_profile(*_: Any) -> None:
        sys.setprofile(None)
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.enable()

    threading.setprofile(start_thread_profile)
    main_prof = cProfile.Profile(time.thread_time)
    main_prof.enable()
    try:
        rc = batchrun_main(list(args))
    finally:
        main_prof.disable()
        threading.setprofile(None)
    with lock:
        for prof in profiles:
            prof.disable()
        stats = pstats.Stats(main_prof)
        for prof in profiles:
            try:
                stats.add(prof)
            except TypeError:  # a thread that never ran a profiled call
                pass
    stats.dump_stats(out)
    return {"rc": rc, "threads_profiled": len(profiles) + 1}
