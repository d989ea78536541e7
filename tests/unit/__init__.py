"""Unit tier: pure code, no sockets and no child processes; milliseconds each (`make check`)."""
