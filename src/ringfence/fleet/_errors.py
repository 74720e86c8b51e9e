"""The fleet layer's errors, one root.

FleetError              the root; cli.py prints it as one line
    ServerError         the server cannot start: a bad --db URL, an unreachable database, a port in use
    EnrollError         enrollment failed: the server refused the token, or is unreachable
    CredentialError     the host's credential file is missing, unreadable or malformed
    TrustError          the CA file the host verifies the server with is missing, unreadable or not PEM
    RolloutError        (also a ValueError) an operator action the rollout's phase does not allow, a plan
                        that cannot work, a stored rollout that does not decode
"""

from __future__ import annotations


class FleetError(Exception):
    """Anything the fleet layer cannot do; the message names what and where."""


class ServerError(FleetError):
    pass


class EnrollError(FleetError):
    pass


class CredentialError(FleetError):
    pass


class TrustError(FleetError):
    pass


class RolloutError(FleetError, ValueError):
    pass
