"""Volumes, networks and plugins: SO3 containers use none, so the lists are empty.

Portainer, the docker CLI and docker-py list these objects on many pages, and
C{docker inspect NAME} looks a name up in each kind, so the lists return
empty, well-formed bodies and every lookup a clean 404.
"""

from typing import Any

from emiso.api.base import app, json_response, parse_filters
from emiso.errors import InvalidParameter, NotFound, NotImplementedForSO3

VOLUME_FILTER_KEYS = frozenset({"dangling", "driver", "label", "name"})
NETWORK_FILTER_KEYS = frozenset(
    {"dangling", "driver", "id", "label", "name", "scope", "type"}
)
PLUGIN_FILTER_KEYS = frozenset({"capability", "enable"})

_BOOLEAN_WORDS = ("true", "false", "1", "0")


class NoSuchVolume(NotFound):
    """The volume does not exist (the engine has no volumes)."""


class NoSuchNetwork(NotFound):
    """The network does not exist (the engine has no networks)."""


class NoSuchPlugin(NotFound):
    """The plugin does not exist (the engine has no plugins)."""


class ObjectRoutes:
    """
    C{/volumes}, C{/networks} and C{/plugins}.
    """

    app = app

    @app.route("/volumes", methods=["GET"])
    def list_volumes(self, request: Any) -> bytes:
        filters = parse_filters(request, VOLUME_FILTER_KEYS)
        _check_boolean_filter(filters, "dangling")
        return json_response(request, {"Volumes": [], "Warnings": []})

    @app.route("/volumes/create", methods=["POST"])
    def create_volume(self, request: Any) -> bytes:
        raise NotImplementedForSO3(
            "volumes are not supported: an SO3 container has no file system "
            "to mount a volume in"
        )

    @app.route("/volumes/prune", methods=["POST"])
    def prune_volumes(self, request: Any) -> bytes:
        parse_filters(request, frozenset({"label", "all"}))
        return json_response(request, {"VolumesDeleted": [], "SpaceReclaimed": 0})

    @app.route("/volumes/<path:name>", methods=["GET", "PUT", "DELETE"])
    def volume(self, request: Any, name: str) -> bytes:
        raise NoSuchVolume(f"get {name}: no such volume")

    @app.route("/networks", methods=["GET"])
    def list_networks(self, request: Any) -> bytes:
        filters = parse_filters(request, NETWORK_FILTER_KEYS)
        _check_boolean_filter(filters, "dangling")
        return json_response(request, [])

    @app.route("/networks/create", methods=["POST"])
    def create_network(self, request: Any) -> bytes:
        raise NotImplementedForSO3(
            "networks are not supported: SO3 containers are MEs that use no "
            "Docker network (NetworkMode none)"
        )

    @app.route("/networks/prune", methods=["POST"])
    def prune_networks(self, request: Any) -> bytes:
        parse_filters(request, frozenset({"label", "until"}))
        return json_response(request, {"NetworksDeleted": []})

    @app.route("/networks/<path:name>", methods=["GET", "DELETE"])
    def network(self, request: Any, name: str) -> bytes:
        raise NoSuchNetwork(f"network {name} not found")

    @app.route("/networks/<path:name>/connect", methods=["POST"])
    @app.route("/networks/<path:name>/disconnect", methods=["POST"])
    def connect_network(self, request: Any, name: str) -> bytes:
        raise NoSuchNetwork(f"network {name} not found")

    @app.route("/plugins", methods=["GET"])
    def list_plugins(self, request: Any) -> bytes:
        parse_filters(request, PLUGIN_FILTER_KEYS)
        return json_response(request, [])

    @app.route("/plugins/privileges", methods=["GET"])
    @app.route("/plugins/pull", methods=["POST"])
    @app.route("/plugins/create", methods=["POST"])
    def install_plugin(self, request: Any) -> bytes:
        raise NotImplementedForSO3("plugins are not supported by the EMISO engine")

    @app.route("/plugins/<path:name>/json", methods=["GET"])
    @app.route("/plugins/<path:name>", methods=["DELETE"])
    @app.route("/plugins/<path:name>/enable", methods=["POST"])
    @app.route("/plugins/<path:name>/disable", methods=["POST"])
    @app.route("/plugins/<path:name>/upgrade", methods=["POST"])
    @app.route("/plugins/<path:name>/push", methods=["POST"])
    @app.route("/plugins/<path:name>/set", methods=["POST"])
    def plugin(self, request: Any, name: str) -> bytes:
        raise NoSuchPlugin(f'plugin "{name}" not found')


def _check_boolean_filter(filters: dict[str, list[str]], key: str) -> None:
    for value in filters.get(key, []):
        if value.lower() not in _BOOLEAN_WORDS:
            raise InvalidParameter(f"invalid filter '{key}={value}'")
