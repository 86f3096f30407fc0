"""Helpers the OptimaCCS tests share: the log events of a test, and a provider reply from the corpus."""

from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource


class LogCapture:
    """Every log event while a test runs (from its creation to the test's cleanup)."""

    def __init__(self, case):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    @property
    def tracebacks(self) -> list:
        return [e for e in self.events if "log_failure" in e]


class Reply(Resource):
    """Every request answered with one status and body (a JSON content type whatever the body is)."""

    isLeaf = True

    def __init__(self, status: int, body: bytes):
        super().__init__()
        self.status, self.body = status, body

    def render(self, request):
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return self.body
