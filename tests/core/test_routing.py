"""Inbound routing: exact DIDs before the wildcard, unknown apps refused at build time."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ConfigError, Route
from gateway.core.routing import Router, Target

APPS = {"echo", "play", "record"}


class RouterTests(SynchronousTestCase):
    def test_exact_wins_over_the_wildcard_whatever_the_order(self):
        router = Router([Route(did="*", to="extension:1002"), Route(did="100", to="extension:1001")], APPS)
        self.assertEqual(router.route("100"), Target("extension", "1001"))
        self.assertEqual(router.route("101"), Target("extension", "1002"))
        self.assertEqual(router.route(None), Target("extension", "1002"))

    def test_the_first_of_equal_dids_wins(self):
        router = Router([Route(did="100", to="app:echo"), Route(did="100", to="extension:1")], APPS)
        self.assertEqual(router.route("100"), Target("app", "echo"))

    def test_no_route(self):
        router = Router([Route(did="100", to="extension:1001")], APPS)
        self.assertIsNone(router.route("200"))
        self.assertIsNone(Router([], APPS).route("100"))

    def test_apps_and_their_arguments(self):
        router = Router([Route(did="1", to="app:play:prompts/welcome.wav"), Route(did="2", to="app:record")], APPS)
        self.assertEqual(router.route("1"), Target("app", "play", "prompts/welcome.wav"))
        self.assertEqual(router.route("2"), Target("app", "record", None))

    def test_an_unknown_app_is_a_startup_error_naming_the_route(self):
        routes = [Route(did="1", to="app:echo"), Route(did="2", to="app:ivr")]
        error = self.assertRaises(ConfigError, Router, routes, APPS)
        self.assertEqual(error.path, "routes[1].to")
        self.assertIn("unknown media app 'ivr' (known: echo, play, record)", str(error))
