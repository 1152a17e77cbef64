"""The workshop: demos, scenario drivers, fault rigs, local server launchers, the TCP proxy.

Not installed (the wheel holds only ``edgeloop``): ``make demo``, ``make bench``,
``make reliability`` and the tests run it from a checkout.
"""
