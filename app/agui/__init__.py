"""AG-UI for frontends: a `RunAgentInput` becomes a leasegate message, and the session's
event stream becomes the run's AG-UI events, whichever worker or replica runs the run.

    message.py    the message a RunAgentInput asks for, and leasegate's options in it
    translate.py  one run's session events as AG-UI events (pure: no I/O)
    tail.py       reading a session's event stream as it grows, from any worker
    follow.py     one run's AG-UI events: the tail through the translator, checked
                  against the run's record while the stream is quiet
"""
