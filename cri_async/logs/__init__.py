"""Container log files in the CRI log format."""
