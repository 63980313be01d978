"""Settings shared by every pytest run of osvirt.vz (unit and integration).

The collection is found as ``ansible_collections.osvirt.vz`` through the link
``.build/collections/ansible_collections/osvirt/vz -> <repo>`` that ``make collection-link``
makes. Running ``pytest`` by hand (without make) works too: the link is made here if missing.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS_PATH = REPO_ROOT / ".build" / "collections"
COLLECTION_LINK = COLLECTIONS_PATH / "ansible_collections" / "osvirt" / "vz"
ANSIBLE_CFG = REPO_ROOT / "tests" / "ansible.cfg"


def ensure_collection_link():
    """Make COLLECTION_LINK a symlink to the repo root (idempotent, same as the Makefile)."""
    if COLLECTION_LINK.is_symlink() and os.readlink(COLLECTION_LINK) == str(REPO_ROOT):
        return
    COLLECTION_LINK.parent.mkdir(parents=True, exist_ok=True)
    if COLLECTION_LINK.is_symlink() or COLLECTION_LINK.is_file():
        COLLECTION_LINK.unlink()
    elif COLLECTION_LINK.exists():
        raise RuntimeError(f"{COLLECTION_LINK} exists and is not a symlink; run `make clean`")
    # A concurrent run may have made it in between: accept an identical link.
    try:
        COLLECTION_LINK.symlink_to(REPO_ROOT)
    except FileExistsError:
        if os.readlink(COLLECTION_LINK) != str(REPO_ROOT):
            raise


def pytest_configure(config):
    ensure_collection_link()
    # Child processes (ansible-playbook) must see our collection and config, never a
    # collection of the same name installed elsewhere on the machine.
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(COLLECTIONS_PATH)
    os.environ.setdefault("ANSIBLE_CONFIG", str(ANSIBLE_CFG))
