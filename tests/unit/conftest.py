"""Unit tests import the collection as Ansible does:

    from ansible_collections.osvirt.vz.plugins.module_utils._limits import parse_size

``ansible_collections`` is a namespace package rooted at ``.build/collections``, where
``ansible_collections/osvirt/vz`` links back to the repo (made by ``make collection-link``
or, when pytest runs by hand, by tests/conftest.py). Putting that directory first on
sys.path is all the import system needs. Unit tests need no root and no LXC.
"""

import sys
from pathlib import Path

COLLECTIONS_PATH = Path(__file__).resolve().parents[2] / ".build" / "collections"

if str(COLLECTIONS_PATH) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_PATH))
