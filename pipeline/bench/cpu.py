"""CPU time spent by the pipeline's processes (the driver, the Ray processes it started or the
warm cluster's, and their workers), for "CPU per frame" figures that other load on the machine
does not inflate the way wall time does."""

from __future__ import annotations

import psutil


class CpuMeter:
    """Sums user + system CPU seconds over this process, its descendants, and (when joined to the
    warm cluster of ``affectstream up``) the processes whose command line names that cluster's
    temp dir. Processes that exit between samples take their CPU time with them, so sample while
    the stream actors live.

    Args:
        temp_dir: the warm cluster's Ray temp dir, if joined.
    """

    def __init__(self, temp_dir: str | None = None) -> None:
        self.temp_dir = temp_dir

    def _procs(self) -> dict[int, psutil.Process]:
        me = psutil.Process()
        procs = {me.pid: me}
        for p in me.children(recursive=True):
            procs[p.pid] = p
        if self.temp_dir:
            from affectstream.pipeline.runtime.warm import processes_of

            # with the workers, which retitle themselves "ray::StreamActor" (found as the
            # raylet's children)
            procs.update((p.pid, p) for p in processes_of(self.temp_dir))
        return procs

    def sample(self) -> float:
        """CPU seconds (user + system) of the pipeline's live processes."""
        total = 0.0
        for p in self._procs().values():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total
