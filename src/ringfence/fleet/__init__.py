"""The fleet control plane (ARCHITECTURE.md section 6): the server's API and database, and the host's
uplink to it. Never imports the host side: what it knows of a host's health is in `ringfence.events`.

    ringfence server ...            fleet/_cli.py -> _server.py (uvicorn) -> _api.py (FastAPI) -> _store.py
    ringfence enroll URL --token    fleet/_client.py: the credential (an Ed25519 key, see _auth.py)
    the agent's [fleet] section     fleet/_uplink.py (heartbeats, findings from the _spool.py offset)

Not built yet: rollouts (the `releases` and `assignments` tables are their seam), operator accounts,
the console.
"""

from ringfence.fleet._client import credential_path
from ringfence.fleet._errors import CredentialError, EnrollError, FleetError, ServerError
from ringfence.fleet._spool import FindingsSpool
from ringfence.fleet._uplink import Uplink, UplinkConfig

__all__ = [
    "CredentialError",
    "EnrollError",
    "FindingsSpool",
    "FleetError",
    "ServerError",
    "Uplink",
    "UplinkConfig",
    "credential_path",
]
