import os

# One thread: the test machine is shared and noisy, and results must not depend on it.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
