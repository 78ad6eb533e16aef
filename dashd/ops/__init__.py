"""
dashd as a process under an operator: the graceful stop and the data
directory's lock (L{lifecycle}), systemd (L{systemd}, L{journal}),
Prometheus metrics (L{metrics}) and the collector's freezing (L{gcfreeze}).
"""
