"""Docker routes that SO3 containers cannot serve: each returns a Docker-style error.

Swarm routes return 503 as dockerd does on a node outside a swarm. Routes
that need a container file system, a build or a registry return 501 with the
reason, so a client prints an error instead of a fake success.
"""

from typing import Any

from emiso.api.base import app, json_response
from emiso.errors import EngineError, NotImplementedForSO3

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE"]

#: dockerd's message for swarm routes on a node outside a swarm.
NOT_SWARM_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or '
    '"docker swarm join" to connect this node to swarm and try again.'
)


class NotSwarmManager(EngineError):
    """The engine is never part of a swarm."""

    status = 503


class UnsupportedRoutes:
    """
    Build, commit, push, save, search, login, swarm and the container file
    system routes.
    """

    app = app

    @app.route("/build", methods=["POST"])
    def build(self, request: Any) -> bytes:
        raise NotImplementedForSO3(
            "docker build is not supported: SO3 images are FIT files built with "
            "mkimage; import the .itb file with docker import or docker load"
        )

    @app.route("/build/prune", methods=["POST"])
    def prune_build_cache(self, request: Any) -> bytes:
        # The engine builds nothing, so its build cache is always empty and
        # docker system prune can finish.
        return json_response(request, {"CachesDeleted": [], "SpaceReclaimed": 0})

    @app.route("/commit", methods=["POST"])
    def commit(self, request: Any) -> bytes:
        raise NotImplementedForSO3(
            "docker commit is not supported: an ME's memory is not an image; "
            "use a checkpoint to save a running ME"
        )

    @app.route("/images/<path:name>/push", methods=["POST"])
    def push(self, request: Any, name: str) -> bytes:
        raise NotImplementedForSO3(
            f"cannot push {name}: the engine has no registry client; copy the "
            ".itb file instead"
        )

    @app.route("/images/<path:name>/get", methods=["GET"])
    @app.route("/images/get", methods=["GET"])
    def save(self, request: Any, name: str = "") -> bytes:
        raise NotImplementedForSO3(
            "docker save is not supported: copy the .itb files from the image "
            "folder instead"
        )

    @app.route("/images/search", methods=["GET"])
    def search(self, request: Any) -> bytes:
        raise NotImplementedForSO3("the engine has no registry to search")

    @app.route("/auth", methods=["POST"])
    def login(self, request: Any) -> bytes:
        raise NotImplementedForSO3(
            "docker login is not supported: the engine never contacts a registry"
        )

    @app.route("/distribution/<path:name>/json", methods=["GET"])
    def distribution(self, request: Any, name: str) -> bytes:
        raise NotImplementedForSO3("the engine has no registry client")

    @app.route("/containers/<name>/export", methods=["GET"])
    @app.route("/containers/<name>/changes", methods=["GET"])
    @app.route("/containers/<name>/archive", methods=["GET", "HEAD", "PUT"])
    def container_files(self, request: Any, name: str) -> bytes:
        self._engine.containers.get(name)
        raise NotImplementedForSO3(
            f"container {name} has no file system: an SO3 container is an ME "
            "running in a slot of the smart object"
        )

    @app.route("/swarm/init", methods=["POST"])
    @app.route("/swarm/join", methods=["POST"])
    def join_swarm(self, request: Any) -> bytes:
        raise NotImplementedForSO3("swarm mode is not supported by the EMISO engine")

    @app.route("/swarm/leave", methods=["POST"])
    def leave_swarm(self, request: Any) -> bytes:
        raise NotSwarmManager("This node is not part of a swarm")

    @app.route("/swarm", methods=ALL_METHODS)
    @app.route("/swarm/<path:rest>", methods=ALL_METHODS)
    @app.route("/services", methods=ALL_METHODS)
    @app.route("/services/<path:rest>", methods=ALL_METHODS)
    @app.route("/nodes", methods=ALL_METHODS)
    @app.route("/nodes/<path:rest>", methods=ALL_METHODS)
    @app.route("/tasks", methods=ALL_METHODS)
    @app.route("/tasks/<path:rest>", methods=ALL_METHODS)
    @app.route("/secrets", methods=ALL_METHODS)
    @app.route("/secrets/<path:rest>", methods=ALL_METHODS)
    @app.route("/configs", methods=ALL_METHODS)
    @app.route("/configs/<path:rest>", methods=ALL_METHODS)
    def swarm(self, request: Any, rest: str = "") -> bytes:
        raise NotSwarmManager(NOT_SWARM_MANAGER)
