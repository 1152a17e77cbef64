"""The workshop: demos, scenario drivers, fault rigs, local server launchers, the TCP proxy.

Not installed (the wheel holds only ``edgeloop``): ``make demo``, ``make bench``,
``make reliability`` and the tests run it from a checkout. Each rig part is
written once, here, and the tests and benchmarks use it:

    servers.py       mosquitto / influxd / VictoriaMetrics on free ports; free_port(); eventually(),
                     the one bounded poll (alive=: fails at once when a process it needs dies)
    procs.py         a component as a real process (python -m edgeloop.cli ...): log file, SIGTERM
                     drain, kill -9 and restart, final counters, CPU seconds and peak RSS from /proc;
                     run_cli() for one-shot commands
    mqtt.py          the workshop's broker side (the only module here that uses paho): connect(),
                     publish_all(), Watcher (keeps what it sees, node statuses, results, online waits,
                     sync(): everything routed to it so far has arrived), Publisher (a paced schedule
                     from a thread)
    configs.py       edge and bridge configs: a base, presets, deep-merged overrides, write_config()
    tcpproxy.py      a TCP forwarder that can go silent like a pulled cable
    faultrig.py      one fault scenario end to end (Rig) and the faults (make reliability, tests)
    loopscenario.py  the drift scenario of the closed loop (e2e test, demo, benchmark)
    scorecard.py     detection scoring and the printed scorecard
    demo.py          make demo (python -m lab.demo); loopdemo.py: its drift phase
"""
