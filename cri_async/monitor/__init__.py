"""Container process monitoring: conmon per container, the subreaper, host preparation.

``conmon.Conmon`` creates containers under conmon and reads what conmon records (exit code,
OOM, logs); ``reaper.Reaper`` collects the double-forked conmons promptly without taking
exit statuses asyncio is waiting for; ``hostprep.prepare_host`` fixes the host up once.
"""

from cri_async.monitor.conmon import Conmon, ConmonError, ExitInfo
from cri_async.monitor.hostprep import prepare_host
from cri_async.monitor.reaper import Reaper, become_subreaper

__all__ = ["Conmon", "ConmonError", "ExitInfo", "Reaper", "become_subreaper", "prepare_host"]
