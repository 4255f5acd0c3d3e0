"""``python -m example_app``: one node of the example app (see :mod:`example_app.node`).

``python -m example_app --help`` lists the options; ``--secret`` and ``--cluster``
(or the ``GOELECT_SECRET`` and ``GOELECT_CLUSTER`` environment variables) start a
secured node.

gevent must patch the standard library before anything else is imported: the
program's entry point does it, never the library.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from example_app.node import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
