"""pytest settings shared by tests/ and notebooks/ (``make test`` runs both in one call).

``make test`` runs on two workers (pytest-xdist, ``-n 2``): most of the suite traces TensorFlow
functions and starts notebook kernels, single-threaded work that left one of CI's two cores idle
(``/usr/bin/time``: 107% CPU with one worker). The scheduler below hands out whole files: a notebook's
cells run in order in one kernel and a test module's fixtures are built once. Lesson 08 reads the network
lesson 07 saves (``runs/lesson07``), so the two notebooks are one unit, 07 first (collection order)."""
SAME_UNIT = {"notebooks/08_sampling.ipynb": "notebooks/07_training_loop.ipynb"}


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class WholeFiles(LoadScopeScheduling):
        """xdist's --dist loadfile (one file = one unit of work), with SAME_UNIT's files joined."""

        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return SAME_UNIT.get(path, path)

    return WholeFiles(config, log)
