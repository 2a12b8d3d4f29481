"""The in-memory ``fake`` backend: simulated processes, real CRI log files, no root."""
