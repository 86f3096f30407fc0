"""SIP trunks (issue 17): the SIP stack the ``sip`` driver is built on, on Twisted only.

The layers, bottom up, each usable and tested alone:

- :mod:`gateway.sip.message`: the strict RFC 3261 parser and serialiser (RFC 4475 torture-tested);
- :mod:`gateway.sip.digest`: digest authentication, client side (RFC 2617 / RFC 8760);
- :mod:`gateway.sip.transaction`: client and server transactions and their timers (RFC 3261 17);
- :mod:`gateway.sip.dialog`: dialogs, loose routing, the 2xx retransmission until the ACK;
- :mod:`gateway.sip.sdp`: SDP offer/answer for the audio leg (RFC 3264, RFC 4733);
- :mod:`gateway.sip.transport`: UDP and TCP transports, and the endpoint that refuses INVITEs from
  hosts that are no trunk and answers OPTIONS;
- :mod:`gateway.sip.register`: registration to a trunk with refresh and backoff;
- :mod:`gateway.sip.call`: inbound and outbound calls, hold and retrieve (what the driver wraps);
- :mod:`gateway.sip.rtp`: RTP, RTCP and RFC 4733 DTMF for one leg, with symmetric RTP;
- :mod:`gateway.sip.config`: the ``[sip]`` section and its ``[[sip.trunks]]``.

The driver on top, mapping calls to the core's legs and RTP into the media plane, is
:mod:`gateway.drivers.sip` (plugin ``plugins/pbx_sip.py``).

No module here imports the global reactor: every timer runs on a reactor or clock passed in.
See ``docs/sip.md`` for the configuration, what is supported and what is next.
"""
