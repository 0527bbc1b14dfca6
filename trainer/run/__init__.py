"""The run directory and what keeps it honest: locks, atomic writes, status, loggers, threads and memory."""
