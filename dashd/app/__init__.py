"""
The application layer: every use case of dashd, whoever asks for it (the
REST API, dashctl through the control socket, the first start, the device
channel). Use cases take typed arguments, use the clock they were given and
raise the domain errors of L{dashd.domain.errors}, never HTTP statuses.
"""
