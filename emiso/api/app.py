"""The Docker Engine API subset, as one Klein application over the engine.

Each route module adds its routes to the shared Klein app in
L{emiso.api.base}; L{DockerAPI} combines them and binds them to an engine.
"""

from typing import Any

from twisted.web.resource import IResource

from emiso.api.base import ErrorRoutes, app
from emiso.api.checkpoints import CheckpointRoutes
from emiso.api.containers import ContainerRoutes
from emiso.api.events import EventRoutes
from emiso.api.execs import ExecRoutes
from emiso.api.images import ImageRoutes
from emiso.api.maintenance import MaintenanceRoutes
from emiso.api.objects import ObjectRoutes
from emiso.api.stats import StatsRoutes
from emiso.api.system import SystemRoutes
from emiso.api.unsupported import UnsupportedRoutes
from emiso.api.update import UpdateRoutes
from emiso.api.versioning import VersionedRoot


class DockerAPI(
    ErrorRoutes,
    SystemRoutes,
    ImageRoutes,
    ContainerRoutes,
    ExecRoutes,
    CheckpointRoutes,
    EventRoutes,
    StatsRoutes,
    MaintenanceRoutes,
    ObjectRoutes,
    UnsupportedRoutes,
    UpdateRoutes,
):
    """
    The routes of the Docker Engine API that SO3 containers support.

    @param engine: the L{emiso.engine.engine.Engine}.
    @param max_body_size: the largest request body accepted, in bytes.
    """

    app = app

    def __init__(self, engine: Any, max_body_size: int = 256 * 1024 * 1024) -> None:
        self._engine = engine
        self._max_body_size = max_body_size

    def resource(self) -> IResource:
        """
        Return the web resource that serves the API with and without a
        version prefix.
        """
        return VersionedRoot(self.app.resource(), self._engine.config.experimental)
