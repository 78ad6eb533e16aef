"""
The live connections: the device channel (JSON-RPC over WebSocket, one
L{session.DeviceSession} per device), the notification stream, and the two
interfaces the application reaches them through: L{router.IRouter} (which
connection holds device X) and L{hub.IHub} (who hears an event).
"""
