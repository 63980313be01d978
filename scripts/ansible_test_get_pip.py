# osvirt.vz: offline stand-in for get-pip.py, used by ansible-test sanity.
"""Stand-in for pip's get-pip.py bootstrap script, for ``ansible-test sanity``.

ansible-test creates each sanity virtualenv without pip and bootstraps pip with a get-pip.py
downloaded from ci-files.testing.ansible.com, a host this machine cannot reach (only the
package registries are). ``make sanity`` puts this file where ansible-test caches that script
(~/.ansible/test/cache/get_pip_<version>.py). It does the same job with what is here:
ensurepip installs the pip wheel bundled with this Python (Debian: python3-pip-whl), then
that pip installs the exact versions ansible-test asked for from the package index.

ansible-test runs it as ``python quiet_pip.py --disable-pip-version-check pip==X
[--no-setuptools] [--no-wheel]`` with this file as GET_PIP.
"""

import ensurepip
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel", "--no-pip"}


def main():
    args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
    ensurepip.bootstrap(upgrade=True)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *args])


if __name__ == "__main__":
    main()
