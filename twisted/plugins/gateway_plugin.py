"""twistd plugin: ``twistd gateway`` / ``twist gateway`` (imports nothing heavy)."""
from twisted.application.service import ServiceMaker

gateway = ServiceMaker("Telephony gateway", "gateway.tap", "Run the telephony gateway daemon.", "gateway")
