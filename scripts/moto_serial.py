"""moto's server (the SSM and DynamoDB API emulator), one request at a time.

`moto_server` serves requests on many threads, and moto's DynamoDB backend
takes no lock: two conditional updates of one item can interleave, which
real DynamoDB never lets happen (it serializes the writes of an item). The
tests check that limits hold under concurrency, so they need the store's
real guarantee: this runs the same moto application with one lock around
each request (connections are still accepted on many threads, so an idle
one blocks nobody).

It ends when the process that started it does (a test run), so that none
is left behind.

Usage: python3 scripts/moto_serial.py HOST PORT
"""

import os
import sys
import threading
import time

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()


def one_at_a_time(environ, start_response):
    with lock:
        return list(app(environ, start_response))


def end_with_parent():
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


threading.Thread(target=end_with_parent, daemon=True).start()
host, port = sys.argv[1], int(sys.argv[2])
run_simple(host, port, one_at_a_time, threaded=True)
