"""
Every WebSocket close code dashd sends, on the device channel and on the
notification stream (RFC 6455 section 7.4: 1000-2999 are the protocol's,
4000-4999 are for applications). A device or subscriber learns from the
code why it was closed; the README lists them.
"""

GOING_AWAY = 1001  # dashd is stopping
POLICY = 1008  # garbage from a device; a subscriber that does not read
TOO_BIG = 1009  # a message over the limit
INTERNAL_ERROR = 1011

REPLACED = 4000  # a newer connection of the same device took over
KEY_REVOKED = 4001  # the subscriber's API key was revoked or expired
TOKEN_ROTATED = 4003  # the device's token was rotated
DELETED = 4004  # the device was deleted
NOT_READING = 4008  # the device left dashd's writes unread too long
TOO_FAST = 4029  # the device kept sending far over its frame rate limit
