"""The live view of a client: its futures' table with live counts, in a browser.

``Client(dashboard=True)`` serves it on loopback at a free port (``client.dashboard_link``
is the URL); docs/dashboard.md describes the page. Nothing here is imported unless a
client asks for a dashboard.
"""

from .counts import Counts, FutureRecord
from .server import Dashboard, parse_address

__all__ = ["Counts", "Dashboard", "FutureRecord", "parse_address"]
