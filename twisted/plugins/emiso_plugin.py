"""twistd plugin: C{twistd emiso} runs the EMISO engine."""

from twisted.application.service import ServiceMaker

emiso = ServiceMaker(
    "EMISO engine",
    "emiso.tap",
    "Docker Engine API server for SO3 containers on a smart object",
    "emiso",
)
