# SPDX-License-Identifier: BSD-3-Clause
"""Jupyter Server configuration used by bench/run.sh for the "jupyter-server-nodelay" target
and for the Jupyter Server fronts ("front-*" targets, started with --gateway-url).

Jupyter Server 1.x sends kernel messages over tornado WebSockets with Nagle's algorithm on:
a reply written right after an earlier small frame waits for the client's delayed ACK
(about 40 ms on Linux). tornado offers WebSocketHandler.set_nodelay(True) but Jupyter Server
never calls it, so this file wraps the open() of both kernel channels handlers to do so: the
one for local kernels, and the one that relays to a gateway when the server runs with
--gateway-url.

It also turns off the iopub rate limit (1000 msg/s and 1 MB/s by default), which otherwise
drops most of a flood or stream and leaves nothing to measure. The default target runs with
no config file at all.

Use:  python3 -m jupyter_server --config=bench/jupyter_server_nodelay.py ...
"""
from jupyter_server.gateway.handlers import WebSocketChannelsHandler
from jupyter_server.services.kernels.handlers import ZMQChannelsHandler


def _with_nodelay(handler_class):
    original = handler_class.open
    if getattr(original, "_kg_bench_nodelay", False):
        return

    def open_with_nodelay(self, *args, **kwargs):
        self.set_nodelay(True)
        return original(self, *args, **kwargs)

    open_with_nodelay._kg_bench_nodelay = True
    handler_class.open = open_with_nodelay


_with_nodelay(ZMQChannelsHandler)
_with_nodelay(WebSocketChannelsHandler)

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)
c.ServerApp.limit_rate = False
