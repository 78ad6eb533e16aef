"""
What dashd knows about devices, keys and accounts, with no I/O: the records
(L{model}), the shadow document and its rules (L{shadow}), who may do what
(L{access}), secrets (L{tokens}), which reported values are stored
(L{timeseries}) and the errors a use case can end in (L{errors}).
"""
