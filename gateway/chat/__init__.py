"""The Expertflow SMS channel connector: Socket.IO client, REST, durable SMS, transports."""
