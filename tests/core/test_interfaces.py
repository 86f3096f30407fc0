"""The registry is the core's two doors: ICallControl for the adapters, IInboundCalls for the drivers."""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from gateway.core.interfaces import ICallControl, IInboundCalls
from gateway.core.registry import Registry

from .harness import Harness


class DoorTests(SynchronousTestCase):
    def test_the_registry_provides_icallcontrol(self):
        self.assertTrue(verifyClass(ICallControl, Registry))
        self.assertTrue(verifyObject(ICallControl, Harness().registry))

    def test_the_registry_provides_iinboundcalls(self):
        self.assertTrue(verifyClass(IInboundCalls, Registry))
        self.assertTrue(verifyObject(IInboundCalls, Harness().registry))

    def test_icallcontrol_lists_every_public_method_of_the_registry_but_its_wiring(self):
        """Nothing an adapter could call is missing from the interface (``incoming`` is the drivers'
        door; ``shutdown`` belongs to whoever owns the registry, ``gateway.callservice``, ``end_live_calls``
        to a cluster node's drain, and ``app_finished`` to the media controller it is wired to)."""
        public = {name for name in dir(Registry) if not name.startswith("_")}
        self.assertLessEqual(public - set(ICallControl) - set(IInboundCalls),
                             {"shutdown", "end_live_calls", "app_finished"})
