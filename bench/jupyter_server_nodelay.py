# SPDX-License-Identifier: BSD-3-Clause
"""Jupyter Server configuration used by bench/run.sh for the "jupyter-server-nodelay" target.

Jupyter Server 1.x sends kernel messages over tornado WebSockets with Nagle's algorithm on:
a reply written right after an earlier small frame waits for the client's delayed ACK
(about 40 ms on Linux). tornado offers WebSocketHandler.set_nodelay(True) but Jupyter Server
never calls it, so this file wraps the kernel channels handler's open() to do so.

It also turns off the iopub rate limit (1000 msg/s and 1 MB/s by default), which otherwise
drops most of a flood or stream and leaves nothing to measure. The default target runs with
no config file at all.

Use:  python3 -m jupyter_server --config=bench/jupyter_server_nodelay.py ...
"""
from jupyter_server.services.kernels.handlers import ZMQChannelsHandler

_original_open = ZMQChannelsHandler.open


def _open_with_nodelay(self, *args, **kwargs):
    self.set_nodelay(True)
    return _original_open(self, *args, **kwargs)


if not getattr(ZMQChannelsHandler.open, "_kg_bench_nodelay", False):
    _open_with_nodelay._kg_bench_nodelay = True
    ZMQChannelsHandler.open = _open_with_nodelay

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)
c.ServerApp.limit_rate = False
